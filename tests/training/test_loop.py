"""LoopState: what state.pt holds, and reading it back puts the batcher and RNGs where they were."""

import random

import numpy as np
import torch

from lmforge.data.batching import WindowBatcher
from lmforge.training.loop import LoopState


def _batcher():
    return WindowBatcher(np.arange(500, dtype=np.int64), block_size=8, batch_size=2, seed=3)


def test_state_dict_round_trips_and_the_next_batch_and_draws_repeat():
    batcher = _batcher()
    batcher.next_batch()
    loop = LoopState(step=7, tokens=112, elapsed=1.5, best_val=2.0, epoch_losses=[3.0])
    state = loop.state_dict({"state": {}}, batcher, "periodic")
    assert state["step"] == 7 and state["reason"] == "periodic" and state["optimizer"]
    expected = (batcher.next_batch()["token_ids"], torch.rand(3), random.random())

    other = _batcher()
    back = LoopState.load_state_dict(state, other)
    assert back == loop
    assert torch.equal(other.next_batch()["token_ids"], expected[0])
    assert torch.equal(torch.rand(3), expected[1]) and random.random() == expected[2]


def test_an_older_state_without_epoch_entries_still_loads():
    batcher = _batcher()
    state = LoopState(step=3).state_dict({}, batcher, "final")
    for key in ("best_val", "epoch_losses", "epoch_sum", "epoch_count"):
        del state[key]
    assert LoopState.load_state_dict(state, _batcher()) == LoopState(step=3)
