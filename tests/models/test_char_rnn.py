"""Char RNN: carried-state decoding, generation that never re-reads the prefix, config checks,
presets, and stateful training (consecutive lanes, the carried state, the trainer's checks)."""

import json

import numpy as np
import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.data.batching import ConsecutiveBatcher
from lmforge.errors import ConfigError
from lmforge.generation.generate import generate
from lmforge.models.char_rnn import PRESETS, CharRNNBackbone, CharRNNCausalLM, CharRNNConfig
from lmforge.presets import all_presets, build_task

TINY = dict(vocab_size=40, embed_dim=16, hidden_dim=32)


def tiny_rnn(**overrides) -> CharRNNCausalLM:
    return CharRNNCausalLM(CharRNNConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def ids():
    return torch.randint(0, 40, (2, 12))


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shapes_and_backbone(ids, cell):
    model = tiny_rnn(cell=cell)
    assert model(ids).shape == (2, 12, 40)
    assert CharRNNBackbone(model.config)(ids).shape == (2, 12, 32)
    assert model.family == model.backbone.family == "char_rnn"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_steps_with_the_carried_state_equal_the_full_forward(ids, cell, num_layers):
    model = tiny_rnn(cell=cell, num_layers=num_layers)
    state = model.init_state(2)
    logits, state = model.step(ids[:, :5], state)  # prefill
    parts = [logits]
    for t in range(5, 12):
        logits, state = model.step(ids[:, t : t + 1], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), model(ids), atol=1e-5, rtol=1e-5)
    if cell == "lstm":
        assert isinstance(state, tuple) and [s.shape for s in state] == [(num_layers, 2, 32)] * 2
    else:
        assert state.shape == (num_layers, 2, 32)


def test_future_tokens_do_not_change_earlier_logits(ids):
    model = tiny_rnn()
    other = ids.clone()
    other[:, -1] = (ids[:, -1] + 1) % 40
    torch.testing.assert_close(model(ids)[:, :-1], model(other)[:, :-1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generation_feeds_each_token_once(cell, monkeypatch):
    model = tiny_rnn(cell=cell)
    fed, real_step = [], model.step

    def counting_step(token_ids, state):
        fed.append(token_ids.shape[1])
        return real_step(token_ids, state)

    monkeypatch.setattr(model, "step", counting_step)
    prompt = [1, 2, 3, 4, 5, 6, 7]
    out = list(generate(model, prompt, max_new_tokens=50, seed=0))
    assert len(out) == 50
    # the prompt once, then one new token per step; never the prefix again
    assert fed == [len(prompt)] + [1] * 49


def test_generation_equals_sampling_from_full_forwards():
    model = tiny_rnn()
    prompt = [3, 1, 4, 1, 5]
    new = [int(t) for t in generate(model, prompt, max_new_tokens=20, temperature=0)]
    seq = list(prompt)
    for _ in range(20):  # greedy, re-reading the whole sequence each time
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert new == seq[len(prompt) :]


def test_reorder_state_selects_rows(ids):
    model = tiny_rnn()
    _, state = model.step(ids, model.init_state(2))
    h, c = model.reorder_state(state, torch.tensor([1, 1, 0]))
    assert torch.equal(h[:, 0], state[0][:, 1]) and torch.equal(c[:, 2], state[1][:, 0])


def test_bad_cell_is_one_line():
    with pytest.raises(ConfigError, match=r"cell='rnn' is unknown; use --cell lstm or --cell gru"):
        CharRNNConfig(cell="rnn")
    with pytest.raises(ConfigError, match="hidden_dim"):
        CharRNNConfig(hidden_dim=0)
    with pytest.raises(ConfigError, match="dropout"):
        CharRNNConfig(dropout=1.0)


def test_presets_have_the_tutorial_sizes_and_recipe():
    assert {"char-rnn-lstm-shakespeare", "char-rnn-gru-shakespeare"} <= set(all_presets())
    lstm = build_task("char_rnn", PRESETS["char-rnn-lstm-shakespeare"]["config"])
    # Embedding 65x256 + LSTM 4x(1024x(256+1024) + 2x1024) + Dense 1024x65 + 65; Keras, with
    # a single LSTM bias, reports 5,330,241 for the same model.
    assert lstm.num_params() == 5_334_337
    recipe = PRESETS["char-rnn-lstm-shakespeare"]["train"]
    assert recipe["batching"] == "epochs" and recipe["block_size"] == 100
    assert recipe["batch_size"] == 64 and recipe["epochs"] == 10 and recipe["save_every_epoch"]
    assert (recipe["lr"], recipe["beta2"], recipe["weight_decay"], recipe["grad_clip"]) == (
        1e-3,
        0.999,
        0.0,
        0.0,
    )


# ---------------------------------------------------------------- stateful training


def test_consecutive_batches_continue_each_lane():
    tokens = np.arange(10_000)  # each token is its own position
    batcher = ConsecutiveBatcher(tokens, block_size=10, batch_size=4, seed=3)
    assert batcher.lane_len == (10_000 - 10) // 4 and batcher.batches_per_epoch == 249
    prev = batcher.next_batch()
    assert not bool(prev["is_continuation"]) and prev["token_ids"].shape == (4, 10)
    assert torch.equal(prev["labels"], prev["token_ids"] + 1)
    firsts = prev["token_ids"][:, 0].numpy()
    assert (np.diff(firsts) == batcher.lane_len).all() and 0 <= firsts[0] < 10  # lanes apart
    for _ in range(batcher.batches_per_epoch - 1):
        batch = batcher.next_batch()
        assert bool(batch["is_continuation"])
        assert torch.equal(batch["token_ids"][:, 0], prev["token_ids"][:, -1] + 1)  # contiguous
        prev = batch
    assert batcher.epoch == 1.0
    batch = batcher.next_batch()  # a new epoch: fresh state, lanes at another offset
    assert not bool(batch["is_continuation"]) and batcher.epoch_index == 1


def test_consecutive_batcher_ranks_split_the_lanes_and_resume():
    tokens = np.arange(5_000)
    whole = ConsecutiveBatcher(tokens, 10, batch_size=4, seed=1)
    halves = [ConsecutiveBatcher(tokens, 10, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        expected = whole.next_batch()["token_ids"]
        got = torch.cat([h.next_batch()["token_ids"] for h in halves])
        assert torch.equal(got, expected)
    resumed = ConsecutiveBatcher(tokens, 10, 4, seed=1)
    resumed.load_state_dict(whole.state_dict())
    a, b = whole.next_batch(), resumed.next_batch()
    assert torch.equal(a["token_ids"], b["token_ids"])
    # the carried state is not saved, so a resumed run restarts it from zeros
    assert bool(a["is_continuation"]) and not bool(b["is_continuation"])


def test_too_little_text_for_the_lanes_is_one_line():
    with pytest.raises(lmforge.DataError, match="too few for 64 lanes"):
        ConsecutiveBatcher(np.arange(1000), block_size=100, batch_size=64)


def test_stateful_loss_carries_the_state_between_batches():
    model = tiny_rnn()
    ids = torch.randint(0, 40, (3, 21))
    full = {"token_ids": ids[:, :-1], "labels": ids[:, 1:]}
    halves = [
        {"token_ids": ids[:, :10], "labels": ids[:, 1:11], "is_continuation": torch.tensor(False)},
        {"token_ids": ids[:, 10:20], "labels": ids[:, 11:], "is_continuation": torch.tensor(True)},
    ]
    carried = (model.loss(halves[0]) + model.loss(halves[1])) / 2
    torch.testing.assert_close(carried, model.loss(full))
    assert not model._carry[0].requires_grad  # detached: backward stops at the batch border
    restarted = model.loss({**halves[1], "is_continuation": torch.tensor(False)})
    plain = model.loss({k: v for k, v in halves[1].items() if k != "is_continuation"})
    torch.testing.assert_close(restarted, plain)
    assert not torch.allclose(restarted, model.loss(halves[1]))  # is_continuation matters


TRAIN = [
    "--preset",
    "char-rnn-lstm-shakespeare",
    "--embed-dim",
    "8",
    "--hidden-dim",
    "32",
    "--batch-size",
    "4",
    "--block-size",
    "20",
    "--threads",
    "1",
    "--eval-tokens",
    "400",
    "--log-every",
    "1",
]


def test_stateful_run_checkpoints_every_epoch_and_samples(tiny_text, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_text), *TRAIN, "--stateful", "--epochs", "2"]
    argv += ["--batch-size", "16", "--lr", "0.01"]  # about 50 steps per epoch
    assert main([*argv, "--keep-last", "5", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert result["steps"] == len(losses) and result["steps"] % 2 == 0
    assert losses[-1] < losses[0] - 1.0
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert steps == [result["steps"] // 2, result["steps"]]  # one checkpoint per epoch
    assert json.loads((out / "config.json").read_text())["train"]["stateful"] is True
    prompt = "ROMEO: "
    argv = ["sample", str(out), "--prompt", prompt, "--max-new-tokens", "30", "--seed", "1"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(prompt)


def test_sampling_a_prompt_with_an_unknown_character_is_one_line(tiny_text, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(tiny_text), *TRAIN, "--max-steps", "2", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    err = _error(capsys, ["sample", str(out), "--prompt", "ROMEO: Z"])
    assert "'Z'" in err


def test_bad_stateful_and_cell_flags_are_one_line(tiny_text, tmp_path, capsys):
    base = ["train", "--data", str(tiny_text), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    err = _error(capsys, [*base, *TRAIN, "--stateful", "--batching", "windows"])
    assert "--stateful" in err and "--batching epochs" in err
    err = _error(capsys, [*base, "--preset", "gpt-baby", "--stateful", "--threads", "1"])
    assert "drop --stateful" in err
    code = main([*base, *TRAIN, "--cell", "rnn"])  # after the data is prepared (progress bars)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("lmforge: error: cell='rnn' is unknown; use --cell lstm")
    assert "Traceback" not in last
    assert not (tmp_path / "r").exists()
