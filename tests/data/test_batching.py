"""Tests for lmforge.data.batching: random windows and shuffled epochs, resumable and per rank."""

import numpy as np
import pytest
import torch

from lmforge.data.batching import EpochBatcher, WindowBatcher, count_targets, iterate_in_order
from lmforge.data.windows import IGNORE
from lmforge.errors import DataError


class Numbered:
    """An example set whose example i is the single token i, to see which examples a batch got."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, indices) -> dict:
        ids = np.asarray(indices, dtype=np.int64)[:, None]
        return {"token_ids": ids, "labels": ids}


def _ids(batch) -> list[int]:
    return batch["token_ids"][:, 0].tolist()


# ---- WindowBatcher --------------------------------------------------------------------------


def test_window_batches_are_contiguous_and_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    batch = WindowBatcher(tokens, block_size=16, batch_size=8, seed=3).next_batch()
    assert batch["token_ids"].shape == batch["labels"].shape == (8, 16)
    assert batch["token_ids"].dtype == torch.int64
    x, y = batch["token_ids"], batch["labels"]
    assert torch.equal(y, x + 1)  # the stream counts up, so the next token is always +1
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)


def test_window_batcher_state_dict_resumes_the_same_batches():
    tokens = np.arange(5000)
    first = WindowBatcher(tokens, block_size=8, batch_size=4, seed=1)
    for _ in range(3):
        first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch() for _ in range(3)]
    resumed = WindowBatcher(tokens, block_size=8, batch_size=4, seed=99)  # seed comes from state
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next_batch()
        assert torch.equal(got["token_ids"], want["token_ids"])
    assert resumed.examples_drawn == first.examples_drawn == 24


def test_window_batcher_ranks_draw_different_windows():
    tokens = np.arange(10_000)
    a = WindowBatcher(tokens, 8, 16, seed=0, rank=0, world_size=2).next_batch()
    b = WindowBatcher(tokens, 8, 16, seed=0, rank=1, world_size=2).next_batch()
    assert not torch.equal(a["token_ids"], b["token_ids"])


def test_window_batcher_needs_one_block():
    WindowBatcher(np.arange(9), block_size=8, batch_size=2).next_batch()  # exactly one window
    with pytest.raises(DataError, match="fewer than one block"):
        WindowBatcher(np.arange(8), block_size=8, batch_size=2)


# ---- EpochBatcher ---------------------------------------------------------------------------


def test_each_epoch_covers_every_example_in_a_new_order():
    batcher = EpochBatcher(Numbered(12), batch_size=4, seed=0)
    epochs = [[i for _ in range(3) for i in _ids(batcher.next_batch())] for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert epochs[0] != epochs[1] != epochs[2]
    assert batcher.epoch_index == 2


def test_drop_last_skips_the_incomplete_batch():
    batcher = EpochBatcher(Numbered(10), batch_size=4, seed=0)
    assert batcher.batches_per_epoch == 2
    seen = [_ids(batcher.next_batch()) for _ in range(3)]
    assert [len(s) for s in seen] == [4, 4, 4] and batcher.epoch_index == 1
    keep = EpochBatcher(Numbered(10), batch_size=4, drop_last=False, shuffle=False)
    assert [_ids(keep.next_batch()) for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_ranks_take_disjoint_examples():
    per_rank = []
    for rank in range(3):
        batcher = EpochBatcher(Numbered(30), batch_size=5, seed=7, rank=rank, world_size=3)
        per_rank.append([i for _ in range(2) for i in _ids(batcher.next_batch())])
    assert sorted(sum(per_rank, [])) == list(range(30))  # together: every example once


def test_epoch_batcher_state_dict_resumes_mid_epoch():
    first = EpochBatcher(Numbered(20), batch_size=3, seed=5)
    for _ in range(8):  # into the second epoch (6 batches per epoch)
        first.next_batch()
    state = first.state_dict()
    expected = [_ids(first.next_batch()) for _ in range(6)]
    resumed = EpochBatcher(Numbered(20), batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert [_ids(resumed.next_batch()) for _ in range(6)] == expected


def test_epoch_batcher_needs_examples():
    with pytest.raises(DataError, match="training split yields"):
        EpochBatcher(Numbered(0), batch_size=2)


def test_iterate_in_order_and_count_targets():
    batches = list(iterate_in_order(Numbered(7), batch_size=3))
    assert [_ids(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    batch = {"labels": torch.tensor([[1, IGNORE, 2], [IGNORE, IGNORE, 3]])}
    assert count_targets(batch) == 3
