"""Batch streams for the trainer: random windows, or shuffled epochs over an example set.

A batcher's whole position lives in `state_dict()`, so a resumed run draws the same batches;
each rank of a distributed run takes its own slice of one global stream.
"""

import numpy as np
import torch

from lmforge.data.windows import IGNORE


def to_tensors(arrays: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


class WindowBatcher:
    """Random contiguous windows of `block_size + 1` tokens from one token stream.

    All ranks share one random stream: each call draws the windows of all `world_size` ranks
    and keeps this rank's slice, so ranks never duplicate a batch, and 2 processes x batch b give
    the same examples as 1 process x 2 micro-batches of b (results do not depend on the number of
    processes, and a run can resume under another world size).

    Example:
        batcher = WindowBatcher(data.tokens("train"), block_size=64, batch_size=12, seed=0)
        batch = batcher.next_batch()  # {"token_ids": (12, 64), "labels": (12, 64)}
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(tokens) < block_size + 1:
            from lmforge.errors import DataError

            raise DataError(
                f"the training split has {len(tokens)} tokens, fewer than one block "
                f"of {block_size + 1}: use a smaller --block-size or more data"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)
        self.examples_drawn = 0  # by all ranks together
        self._offsets = np.arange(block_size + 1)

    @property
    def epoch(self) -> float:
        """Tokens drawn by all ranks so far, as a fraction of the training split."""
        return self.examples_drawn * self.block_size / max(1, len(self.tokens))

    def next_batch(self) -> dict:
        b = self.batch_size
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=b * self.world_size)
        starts = starts[self.rank * b : (self.rank + 1) * b]
        window = self.tokens[starts[:, None] + self._offsets].astype(np.int64)
        self.examples_drawn += b * self.world_size
        return to_tensors({"token_ids": window[:, :-1], "labels": window[:, 1:]})

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "examples_drawn": self.examples_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.examples_drawn = state["examples_drawn"]


class EpochBatcher:
    """Shuffled passes over an example set (`len()` + `get(indices)`), reshuffled every epoch.

    Each call takes the next `batch_size * world_size` examples of the epoch's permutation and
    keeps this rank's slice; the position counts examples of all ranks, so a run can resume
    under another world size. An incomplete last global batch is dropped when `drop_last`.
    """

    def __init__(
        self,
        examples,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if len(examples) < batch_size * world_size and drop_last:
            from lmforge.errors import DataError

            raise DataError(
                f"the training split yields {len(examples)} examples, fewer than one batch of "
                f"{batch_size * world_size}: use a smaller --batch-size or --block-size, "
                "or more data"
            )
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch_index, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        n = len(self.examples)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch_index]).permutation(n)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        n, g = len(self._order), self.global_batch
        return n // g if self.drop_last else -(-n // g)

    @property
    def epoch(self) -> float:
        """Epochs done: exactly 1.0 after an epoch's last batch, even when drop_last drops some
        examples (the budget `--epochs N` then takes N * batches_per_epoch steps)."""
        return self.epoch_index + self.position / max(1, self.batches_per_epoch * self.global_batch)

    def next_batch(self) -> dict:
        if self.position >= self.batches_per_epoch * self.global_batch or (
            self.position >= len(self._order)
        ):
            self.epoch_index += 1
            self.position = 0
            self._order = self._make_order()
        chunk = self._order[self.position : self.position + self.global_batch]
        self.position += self.global_batch
        b = self.batch_size
        return to_tensors(self.examples.get(chunk[self.rank * b : (self.rank + 1) * b]))

    def state_dict(self) -> dict:
        return {"epoch_index": self.epoch_index, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_index, self.position = state["epoch_index"], state["position"]
        self._order = self._make_order()


def iterate_in_order(examples, batch_size: int):
    """Every example once, in order, in batches (evaluation)."""
    for start in range(0, len(examples), batch_size):
        yield to_tensors(examples.get(np.arange(start, min(start + batch_size, len(examples)))))


def count_targets(batch: dict) -> int:
    return int((batch["labels"] != IGNORE).sum())


class ConsecutiveBatcher:
    """Consecutive windows for stateful training (truncated BPTT): row i of batch k + 1 is the
    text that follows row i of batch k.

    The stream is cut into `batch_size * world_size` lanes of equal length; batch k holds
    window k (`block_size` inputs + 1 shifted target) of each of this rank's lanes. Shuffling
    would break the lanes, so each epoch starts them at a new random offset in [0, block_size)
    instead, which moves the window borders. Every batch carries "is_continuation", a bool
    scalar: False on an epoch's first batch and on the first batch after a resume (the carried
    state is not saved), True otherwise.

    Example:
        batcher = ConsecutiveBatcher(data.tokens("train"), block_size=100, batch_size=64)
        batch = batcher.next_batch()  # token_ids (64, 100), labels (64, 100), is_continuation
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        lanes = batch_size * world_size
        # block_size tokens are kept back for the epoch offset; a window needs block_size + 1
        self.lane_len = (len(tokens) - block_size) // lanes
        if self.lane_len < block_size + 1:
            from lmforge.errors import DataError

            raise DataError(
                f"the training split has {len(tokens)} tokens, too few for {lanes} lanes of at "
                f"least {block_size + 1}: use a smaller --batch-size or --block-size, or more data"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (self.lane_len - 1) // block_size
        self.epoch_index, self.position = 0, 0
        self._is_fresh = True  # the next batch starts from a zero state

    @property
    def epoch(self) -> float:
        return self.epoch_index + self.position / self.batches_per_epoch

    def lane_starts(self) -> np.ndarray:
        """Where this epoch's lanes of this rank start in the token stream, (batch_size,)."""
        offset = np.random.default_rng([self.seed, self.epoch_index]).integers(self.block_size)
        b = self.batch_size
        return offset + (self.rank * b + np.arange(b)) * self.lane_len

    def next_batch(self) -> dict:
        if self.position >= self.batches_per_epoch:
            self.epoch_index, self.position, self._is_fresh = self.epoch_index + 1, 0, True
        starts = self.lane_starts() + self.position * self.block_size
        window = self.tokens[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64)
        batch = to_tensors({"token_ids": window[:, :-1], "labels": window[:, 1:]})
        batch["is_continuation"] = torch.tensor(not self._is_fresh)
        self.position += 1
        self._is_fresh = False
        return batch

    def state_dict(self) -> dict:
        return {"epoch_index": self.epoch_index, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_index, self.position = state["epoch_index"], state["position"]
        self._is_fresh = True
