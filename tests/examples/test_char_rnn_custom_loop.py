"""examples/char_rnn_custom_loop.py: the hand-written loop gives fit()'s losses and weights."""

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from lmforge.data.batching import EpochBatcher
from lmforge.data.windows import StrideWindows
from lmforge.models.char_rnn import CharRNNCausalLM, CharRNNConfig
from lmforge.training.trainer import TrainConfig, fit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "char_rnn_custom_loop.py"


def _example():
    spec = importlib.util.spec_from_file_location("char_rnn_custom_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_loop_gives_the_same_losses_as_fit(tmp_path):
    tokens = (np.arange(3000) * 7 + np.arange(3000) // 50) % 20  # a learnable pattern
    torch.manual_seed(0)
    by_fit = CharRNNCausalLM(CharRNNConfig(vocab_size=20, embed_dim=8, hidden_dim=32))
    by_hand = copy.deepcopy(by_fit)

    # fit() with the tutorial's recipe (Adam, constant lr, no clipping) at a higher lr, 2 epochs
    cfg = TrainConfig(
        batch_size=8,
        epochs=2,
        lr=1e-2,
        beta2=0.999,
        weight_decay=0.0,
        grad_clip=0.0,
        warmup_steps=0,
        schedule="constant",
        log_every=1,
        eval_every=10_000,
        seed=5,
    )
    # the tutorial's disjoint chunks (block + 1 tokens each): 3000 // 21 = 142, 17 batches of 8
    batcher = EpochBatcher(StrideWindows(tokens, 20, stride=21), batch_size=8, seed=5)
    (tmp_path / "run").mkdir()
    fit(by_fit, batcher, StrideWindows(tokens[:200], 20), cfg, run_dir=tmp_path / "run")
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    fit_losses = [json.loads(r)["train_loss"] for r in rows if "train_loss" in r]

    optimizer = torch.optim.Adam(by_hand.parameters(), lr=1e-2)
    batcher = EpochBatcher(StrideWindows(tokens, 20, stride=21), batch_size=8, seed=5)
    hand_losses = list(_example().train_by_hand(by_hand, batcher, optimizer, len(fit_losses)))

    assert len(fit_losses) == 2 * 17  # --epochs 2: exactly two passes
    # fit() steps a fused AdamW without decay, the loop torch.optim.Adam: the same update,
    # computed by different kernels, so equal up to float rounding
    np.testing.assert_allclose(hand_losses, fit_losses, rtol=1e-5)
    assert hand_losses[-1] < hand_losses[0] - 0.1
    for (name, a), b in zip(by_fit.state_dict().items(), by_hand.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_the_script_runs_on_a_text_file(tiny_text, monkeypatch, capsys):
    argv = ["char_rnn_custom_loop.py", "--data", str(tiny_text), "--steps", "3"]
    monkeypatch.setattr("sys.argv", [*argv, "--hidden-dim", "16"])
    _example().main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("step 3: loss ") and float(lines[-1].split()[-1]) > 0
