"""Char RNN: carried-state decoding, generation that never re-reads the prefix, config checks,
presets, and stateful training (consecutive lanes, the carried state, the trainer's checks)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.data.batching import ConsecutiveBatcher
from lmforge.data.prepare import PreparedData
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


def _train_split(run) -> np.ndarray:
    """The token ids a run trained on (its prepared folder's train split)."""
    prepared = json.loads((run / "config.json").read_text())["data"]["path"]
    return PreparedData(prepared).tokens("train")


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


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
    # threads fixed: no best_threads probe, whose timed steps would be counted too
    out = list(generate(model, prompt, max_new_tokens=50, seed=0, threads=1))
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


def test_copy_slots_copies_h_and_c_in_place(ids):
    model = tiny_rnn()
    state = model.init_slots(3)
    model.step_slots(ids, state, [0, 1], [0, 0])
    h, c = (part.clone() for part in state)
    pointers = [part.data_ptr() for part in state]
    model.copy_slots(state, [1, 1], [0, 2])  # two beams continue slot 1's
    assert [part.data_ptr() for part in state] == pointers
    for slot in range(3):
        assert torch.equal(state[0][:, slot], h[:, 1]) and torch.equal(state[1][:, slot], c[:, 1])
    assert not torch.equal(h[:, 0], h[:, 1])  # the copy changed slot 0


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


def test_stateful_training_carries_the_state_within_each_epoch(tiny_text, tmp_path, monkeypatch):
    seen, real_loss = [], CharRNNCausalLM.loss

    def recording_loss(self, batch):
        if "is_continuation" in batch:  # training batches (evaluation has none)
            carry = self._carry
            seen.append((bool(batch["is_continuation"]), carry is not None))
            loss = real_loss(self, batch)
            assert not self._carry[0].requires_grad  # detached: BPTT stops at the border
            if seen[-1][0]:  # the state went in: the new one differs from the carried one
                assert not torch.equal(self._carry[0], carry[0])
            return loss
        return real_loss(self, batch)

    monkeypatch.setattr(CharRNNCausalLM, "loss", recording_loss)
    argv = ["train", "--data", str(tiny_text), *TRAIN, "--stateful", "--epochs", "2"]
    assert main([*argv, "--batch-size", "16", "--out", str(tmp_path / "run")]) == 0
    per_epoch = len(seen) // 2
    train = _train_split(tmp_path / "run")
    lanes = ConsecutiveBatcher(train, block_size=20, batch_size=16)
    assert per_epoch == lanes.batches_per_epoch and len(seen) == 2 * per_epoch
    expected = [False] + [True] * (per_epoch - 1)
    assert [c for c, _ in seen] == expected * 2


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
    for batching in ("windows", "blocks", "documents"):
        err = _error(capsys, [*base, *TRAIN, "--stateful", "--batching", batching])
        assert f"--batching {batching} does not keep" in err and "use --batching epochs" in err
    err = _error(capsys, [*base, "--preset", "gpt-baby", "--stateful", "--threads", "1"])
    assert "drop --stateful" in err
    err = _error(capsys, [*base, *TRAIN, "--cell", "rnn"])  # refused before any data is read
    assert "--cell: invalid choice: 'rnn'" in err and "lstm" in err and "gru" in err
    config = tmp_path / "options.json"  # a --config file bypasses the flag's choices
    config.write_text(json.dumps({"cell": "rnn"}))
    code = main([*base, *TRAIN, "--config", str(config)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("lmforge: error: cell='rnn' is unknown; use --cell lstm")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the tutorial's recipe


def test_the_recipe_is_172_steps_of_disjoint_chunks_at_a_constant_lr():
    from lmforge.data.batching import EpochBatcher
    from lmforge.training.schedules import lr_at
    from lmforge.training.trainer import (
        _steps_per_epoch,
        make_examples,
        make_optimizer,
        resolve_options,
    )

    cfg, model_over, preset = resolve_options({"preset": "char-rnn-lstm-shakespeare"})
    assert (cfg.batching, cfg.block_size, cfg.batch_size, cfg.epochs) == ("epochs", 100, 64, 10)
    assert cfg.disjoint_windows and cfg.save_every_epoch and not cfg.stateful
    shared = Path(os.environ["LMFORGE_DATA_DIR"])  # ../shared/data (conftest)
    text = (shared / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert len(text) == 1_115_394  # the char tokenizer: one token per character

    class WholeText:  # what _train reads of a prepared folder with --val-fraction 0
        def tokens(self, split):
            return np.zeros(len(text), dtype=np.uint16)

    # the trainer's own code path: stride block_size + 1 when disjoint_windows
    examples = make_examples(WholeText(), "train", cfg.batching, 100, None, stride=101)
    assert len(examples) == 1_115_394 // 101 == 11_043
    batch = examples.get([0, 1])
    assert batch["token_ids"].shape == (2, 100) and (batch["labels"] != -100).all()
    batcher = EpochBatcher(examples, cfg.batch_size, cfg.seed)
    assert _steps_per_epoch(batcher, cfg.grad_accum) == batcher.batches_per_epoch == 172
    # Adam at Keras' defaults: lr 1e-3 at every step (no warmup, no decay), beta2 0.999
    lrs = [
        lr_at(s, s / 1720, cfg.lr, cfg.warmup_steps, cfg.lr / 10, cfg.schedule)
        for s in (0, 1, 900, 1719)
    ]
    assert lrs == [1e-3] * 4
    optimizer = make_optimizer(build_task("char_rnn", preset["config"]), cfg)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.0
    assert cfg.grad_clip == 0.0


def test_epochs_budget_takes_exactly_that_many_epochs():
    from lmforge.data.batching import EpochBatcher
    from lmforge.data.windows import StrideWindows

    batcher = EpochBatcher(StrideWindows(np.arange(1000), 10, stride=11), batch_size=8)
    assert len(batcher.examples) == 90 and batcher.batches_per_epoch == 11  # 2 examples dropped
    epochs = []
    for _ in range(22):
        batcher.next_batch()
        epochs.append(batcher.epoch)
    assert epochs[10] == 1.0 and epochs[21] == 2.0 and epochs[11] > 1.0


def test_recipe_on_the_whole_text_checkpoints_every_epoch_and_samples(
    tiny_text, tmp_path, capsys, monkeypatch
):
    """The README's command, tiny: --val-fraction 0 trains on all of it; no evaluation."""
    out = tmp_path / "whole"
    argv = ["train", "--data", str(tiny_text), "--preset", "char-rnn-lstm-shakespeare"]
    argv += ["--val-fraction", "0", "--epochs", "2", "--embed-dim", "8", "--hidden-dim", "16"]
    argv += ["--batch-size", "8", "--lr", "0.01", "--threads", "1", "--keep-last", "5"]
    argv += ["--out", str(out)]  # --lr 0.01: a 16-unit LSTM learns visibly in 2 tiny epochs
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_epoch = len(tiny_text.read_text()) // 101 // 8  # 17,760 chars: 175 chunks, 21 batches
    assert result["steps"] == 2 * per_epoch == 42
    assert result["val_loss"] is None and result["val_perplexity"] is None
    first, second = result["epoch_losses"]
    assert second < first - 0.3
    rows = _rows(out)
    assert not any("val_loss" in r for r in rows) and not (out / "best").exists()
    assert [(r["step"], r["epoch"]) for r in rows if "epoch_loss" in r] == [
        (per_epoch, 1),
        (2 * per_epoch, 2),
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step-{per_epoch:08d}",
        f"step-{2 * per_epoch:08d}",
    ]
    latest = out / "checkpoints" / f"step-{2 * per_epoch:08d}" / "model.safetensors"
    assert (out / "model.safetensors").read_bytes() == latest.read_bytes()
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["val_fraction"] == 0.0 and saved["data"]["batching"] == "epochs"

    # the README's sample command: the prompt once, then one character per step
    fed, real_step = [], CharRNNCausalLM.step

    def counting_step(self, token_ids, state):
        fed.append(token_ids.shape[1])
        return real_step(self, token_ids, state)

    monkeypatch.setattr(CharRNNCausalLM, "step", counting_step)
    argv = ["sample", str(out), "--prompt", "ROMEO: ", "--max-new-tokens", "1000"]
    argv += ["--threads", "1"]  # no best_threads probe: its timed steps would be counted too
    assert main([*argv, "--temperature", "1.0", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO: ") and len(text.rstrip("\n")) >= 7 + 990
    assert fed == [7] + [1] * 999

    # nothing is held out: eval says so in one line, and evaluates --data instead
    err = _error(capsys, ["eval", str(out)])
    assert "--val-fraction 0" in err and "--data" in err
    assert main(["eval", str(out), "--data", str(tiny_text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 17_759

    png = tmp_path / "loss.png"
    assert main(["plot", str(out), "--x", "epoch", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    from lmforge.inspect.plot import loss_figure, read_metrics

    ax = loss_figure([read_metrics(out)], x="epoch").axes[0]
    train, means = ax.get_lines()
    assert means.get_label() == "whole train, mean of each epoch"
    assert list(means.get_xdata()) == [1, 2] and list(means.get_ydata()) == [first, second]
    assert max(train.get_xdata()) == 2.0


def test_recipe_with_a_held_out_tail_and_a_prepared_folder(tiny_text, tmp_path, capsys):
    base = ["--preset", "char-rnn-lstm-shakespeare", "--epochs", "1", "--embed-dim", "8"]
    base += ["--hidden-dim", "16", "--batch-size", "8", "--threads", "1"]
    out = tmp_path / "held-out"
    assert main(["train", "--data", str(tiny_text), *base, "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_loss"] > 0 and len(result["epoch_losses"]) == 1
    train = _train_split(out)  # the tail, from the first line start in the last 10%, is held out
    assert 0.89 * 17_760 < len(train) < 0.91 * 17_760
    assert result["steps"] == len(train) // 101 // 8 == 19
    final = [r for r in _rows(out) if r.get("final")]
    assert final[0]["val_loss"] == result["val_loss"] and (out / "best").is_dir()

    # prepare once without a held-out part, then train on the prepared folder
    prepared = tmp_path / "prepared"
    argv = ["prepare", "--data", str(tiny_text), "--tokenizer", "char", "--val-fraction", "0"]
    assert main([*argv, "--out", str(prepared), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_tokens"] == 0
    out = tmp_path / "from-prepared"
    assert main(["train", "--data", str(prepared), *base, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("done: 21 steps, train loss ") and "(no validation split)" in line


def test_epoch_losses_survive_a_resume(tiny_text, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_text), *TRAIN, "--batching", "epochs"]
    argv += ["--disjoint-windows", "--batch-size", "16", "--json"]

    def run(out, *extra) -> dict:
        assert main([*argv, "--out", str(tmp_path / out), *extra]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    straight = run("straight", "--epochs", "2")
    run("resumed", "--epochs", "1")
    resumed = run("resumed", "--epochs", "2", "--resume")
    per_epoch = len(_train_split(tmp_path / "straight")) // 21 // 16  # disjoint 20 + 1 chunks
    assert straight["steps"] == resumed["steps"] == 2 * per_epoch
    assert len(straight["epoch_losses"]) == 2
    np.testing.assert_allclose(resumed["epoch_losses"], straight["epoch_losses"], rtol=1e-6)
