"""Masked-LM token selection (BERT): pick positions, corrupt them 80/10/10, keep the targets.

Everything is numpy on a `np.random.Generator` passed in, so a batch's masks depend only on the
seed and the batch (exact resume); `MaskedLMExamples` derives that seed from the example indices.
"""

from collections.abc import Iterable

import numpy as np

from lmforge.errors import ConfigError


class MaskedLMMaskGenerator:
    """Choose tokens to predict and corrupt them, as in BERT pretraining.

    Each row keeps round(selection_rate x selectable tokens) selections (at least one when any
    token is selectable), at most `mask_selection_length`. A selected token becomes the mask
    token with probability `mask_token_rate`, a random token with `random_token_rate`, and stays
    as it is otherwise (BERT: 0.8 / 0.1 / 0.1).

    Args:
        vocabulary_size: V; random replacements are drawn from [0, V) minus the unselectable ids.
        mask_selection_rate: share of the selectable tokens to predict (BERT 0.15; the Keras
            tutorial 0.25).
        mask_token_id: the [MASK] id.
        mask_selection_length: P, the most selections per row; outputs are (N, P), padded with
            position 0 and weight 0.
        unselectable_token_ids: never selected ([CLS], [SEP], [PAD], ...).

    Example:
        gen = MaskedLMMaskGenerator(1000, 0.25, mask_token_id=3, mask_selection_length=64,
                                    unselectable_token_ids=(0, 1, 2))
        out = gen(token_ids, np.random.default_rng(0))
        out["mask_positions"], out["mask_ids"], out["mask_weights"]  # (N, 64) each
    """

    def __init__(
        self,
        vocabulary_size: int,
        mask_selection_rate: float,
        mask_token_id: int,
        mask_selection_length: int,
        unselectable_token_ids: Iterable[int] = (0,),
        mask_token_rate: float = 0.8,
        random_token_rate: float = 0.1,
    ):
        if not 0.0 < mask_selection_rate <= 1.0:
            raise ConfigError(f"mask_selection_rate={mask_selection_rate} must be in (0, 1]")
        if mask_selection_length < 1:
            raise ConfigError(f"mask_selection_length={mask_selection_length} must be >= 1")
        if min(mask_token_rate, random_token_rate) < 0 or mask_token_rate + random_token_rate > 1:
            raise ConfigError(
                f"mask_token_rate={mask_token_rate} + random_token_rate={random_token_rate} "
                "must be rates that sum to at most 1"
            )
        if not 0 <= mask_token_id < vocabulary_size:
            raise ConfigError(
                f"mask_token_id={mask_token_id} is outside the vocabulary of {vocabulary_size}"
            )
        self.vocabulary_size = vocabulary_size
        self.mask_selection_rate = mask_selection_rate
        self.mask_token_id = mask_token_id
        self.mask_selection_length = mask_selection_length
        self.unselectable = np.array(sorted(set(unselectable_token_ids)), dtype=np.int64)
        self.mask_token_rate, self.random_token_rate = mask_token_rate, random_token_rate
        # ids a random replacement may take: not special, so no fake [SEP] or [PAD] appears
        self._random_pool = np.setdiff1d(np.arange(vocabulary_size), self.unselectable)

    def __call__(self, token_ids: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """(N, T) ids -> "token_ids" (N, T) corrupted, "mask_positions" (N, P), "mask_ids"
        (N, P) original ids there, "mask_weights" (N, P) float32, 1 = a real selection."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        N, T = token_ids.shape
        P = self.mask_selection_length
        selectable = ~np.isin(token_ids, self.unselectable)  # (N, T)
        num_selectable = selectable.sum(axis=1)
        wanted = np.rint(num_selectable * self.mask_selection_rate).astype(np.int64)
        wanted = np.minimum(np.maximum(wanted, (num_selectable > 0).astype(np.int64)), P)
        # a random order of each row's selectable positions: the first `wanted` are chosen
        scores = np.where(selectable, rng.random((N, T)), np.inf)
        order = np.argsort(scores, axis=1, kind="stable")[:, :P]  # (N, min(T, P))
        if order.shape[1] < P:
            order = np.pad(order, ((0, 0), (0, P - order.shape[1])))
        chosen = np.arange(P)[None, :] < wanted[:, None]  # (N, P)
        # sort each row's chosen positions; padding slots (position 0, weight 0) go last
        positions = np.sort(np.where(chosen, order, T), axis=1)
        chosen = positions < T
        positions = np.where(chosen, positions, 0)
        rows = np.arange(N)[:, None]
        mask_ids = np.where(chosen, token_ids[rows, positions], 0)

        out = token_ids.copy()
        action = rng.random((N, P))
        to_mask = chosen & (action < self.mask_token_rate)
        to_random = (
            chosen
            & (action >= self.mask_token_rate)
            & (action < self.mask_token_rate + self.random_token_rate)
        )
        replacements = self._random_pool[rng.integers(0, len(self._random_pool), (N, P))]
        new = np.where(to_mask, self.mask_token_id, np.where(to_random, replacements, mask_ids))
        r, c = np.nonzero(chosen)
        out[r, positions[r, c]] = new[r, c]
        return {
            "token_ids": out,
            "mask_positions": positions,
            "mask_ids": mask_ids,
            "mask_weights": chosen.astype(np.float32),
        }


class MaskedLMExamples:
    """Packed rows with fresh masks at every `get`: the example set of MLM pretraining. A batch
    holds "token_ids" (masked), "padding_mask", "mask_positions" and "labels" (N, P): the
    original ids at those positions, -100 where a slot is padding (weight 0).

    The masks of a batch come from a generator seeded with (seed, the batch's indices), so they
    are the same after a resume, differ between epochs (other batches), and are fixed for
    evaluation (the same indices every time).
    """

    def __init__(self, packed, generator: MaskedLMMaskGenerator, seed: int = 0):
        self.packed, self.generator, self.seed = packed, generator, seed

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def length(self) -> int:
        return self.packed.length

    def get(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        batch = self.packed.get(indices)
        rng = np.random.default_rng([self.seed, *indices.tolist()])
        masked = self.generator(batch["token_ids"], rng)
        return {
            "token_ids": masked["token_ids"],
            "padding_mask": batch["padding_mask"],
            "mask_positions": masked["mask_positions"],
            # the targets; -100 marks padding slots, as the trainer's loss and evaluate() expect
            "labels": np.where(masked["mask_weights"] > 0, masked["mask_ids"], -100),
        }
