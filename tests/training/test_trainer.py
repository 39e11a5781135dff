"""The training loop: loss falls, exact resume, budgets, divergence and interruption."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.errors import CheckpointError, ConfigError
from lmforge.run_folder import list_checkpoints
from lmforge.training import loop, trainer

TINY = dict(
    preset="gpt-baby",
    optimizer="adamw",
    num_layers=1,
    embed_dim=32,
    num_heads=2,
    ffn_dim=64,
    max_seq_len=16,
    batch_size=4,
    eval_every=10,
    eval_tokens=256,
    log_every=1,
    warmup_steps=2,
    lr=3e-3,
    threads=1,
    precision="fp32",
)


def _run(tiny_text, out, **kw):
    return lmforge.train(data=str(tiny_text), tokenizer="char", out=str(out), **{**TINY, **kw})


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_run_folder_is_complete(tiny_text, tmp_path):
    result = _run(tiny_text, tmp_path / "run", max_steps=40, lr=1e-2)
    rows = [r for r in _metrics(tmp_path / "run") if "train_loss" in r]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.0
    assert result["steps"] == 40 and result["tokens"] == 40 * 4 * 16
    for name in ("config.json", "model.safetensors", "state.pt", "metrics.jsonl", "tokenizer"):
        assert (tmp_path / "run" / name).exists(), name
    assert result["val_loss"] < 3.0 and "val_bits_per_char" in result
    model = lmforge.load(tmp_path / "run")
    assert model(torch.tensor([[1, 2, 3]])).shape == (
        1,
        3,
        lmforge.load_tokenizer(tmp_path / "run").vocab_size,
    )


def _assert_same_run(a_dir, b_dir):
    a = load_file(a_dir / "model.safetensors")
    b = load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda run: [r["train_loss"] for r in _metrics(run) if "train_loss" in r]  # noqa: E731
    assert losses(a_dir) == losses(b_dir) and len(losses(a_dir)) == 16


def test_n_plus_n_resumed_steps_equal_2n_straight(tiny_text, tmp_path):
    # A constant schedule: `--max-steps 8` then `--resume --max-steps 16` (the total).
    _run(tiny_text, tmp_path / "straight", max_steps=16, schedule="constant")
    _run(tiny_text, tmp_path / "split", max_steps=8, schedule="constant")
    _run(tiny_text, tmp_path / "split", max_steps=16, resume=True, schedule="constant")
    _assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_samples_during_training_keep_resume_exact(tiny_text, tmp_path):
    # --sample-every decodes through the engine, which lays weights out for decoding: training
    # puts them back, so the straight run computes as the resumed one (row-major after loading)
    kw = dict(schedule="constant", sample_every=4)
    _run(tiny_text, tmp_path / "straight", max_steps=16, **kw)
    _run(tiny_text, tmp_path / "split", max_steps=8, **kw)
    _run(tiny_text, tmp_path / "split", max_steps=16, resume=True, **kw)
    _assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_a_sample_leaves_the_weights_row_major_and_the_modules_plain(tiny_text):
    from lmforge.layers.heads import LMHead
    from lmforge.layers.layout import decode_layout_
    from lmforge.models.gpt import GPTCausalLM, GPTConfig
    from lmforge.tokenizers.char import CharTokenizer

    tok = CharTokenizer.train(tiny_text.read_text())
    task = GPTCausalLM(GPTConfig(vocab_size=tok.vocab_size, num_layers=1, embed_dim=32,
                                 num_heads=2, ffn_dim=64, max_seq_len=16))  # fmt: skip
    weights = [m.weight for m in task.modules() if isinstance(m, torch.nn.Linear)]
    before = [w.detach().clone() for w in weights]
    assert decode_layout_(task) > 0  # what the engine does: small-rows modules or column-major
    assert type(task.head) is not LMHead or not weights[0].is_contiguous()
    loop._print_sample(task, tok)
    assert all(w.is_contiguous() for w in weights)
    linears = [m for m in task.modules() if isinstance(m, (torch.nn.Linear, LMHead))]
    assert all(type(m) in (torch.nn.Linear, LMHead) for m in linears)  # not the small-rows ones
    assert all(torch.equal(w, b) for w, b in zip(weights, before))


def test_resume_needs_only_the_run_folder_and_the_new_budget(tiny_text, tmp_path):
    # the run's own data, tokenizer, model overrides and recipe come from its config.json
    _run(tiny_text, tmp_path / "straight", max_steps=16, schedule="constant")
    _run(tiny_text, tmp_path / "split", max_steps=8, schedule="constant")
    result = lmforge.train(out=str(tmp_path / "split"), resume=True, max_steps=16)
    assert result["steps"] == 16
    _assert_same_run(tmp_path / "straight", tmp_path / "split")
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert saved["train"]["data"] == str(tiny_text) and saved["model"]["embed_dim"] == 32
    assert saved["resumes"] == [{"step": 8, "changed": {"max_steps": [8, 16]}}]


def test_resume_refuses_a_change_of_recipe(tiny_text, tmp_path):
    _run(tiny_text, tmp_path / "run", max_steps=2)
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"lr would change from 0.003 to 0.1.*drop --lr"):
        lmforge.train(out=str(tmp_path / "run"), resume=True, max_steps=4, lr=0.1)
    assert (tmp_path / "run" / "config.json").read_text() == before
    assert list_checkpoints(tmp_path / "run")[-1].name == "step-00000002"


def test_muon_run_learns_and_resumes_exactly(tiny_text, tmp_path):
    kw = dict(optimizer="muon", schedule="constant", lr=1e-2)
    _run(tiny_text, tmp_path / "straight", max_steps=16, **kw)
    rows = [r["train_loss"] for r in _metrics(tmp_path / "straight") if "train_loss" in r]
    assert rows[-1] < rows[0] - 0.5
    _run(tiny_text, tmp_path / "split", max_steps=8, **kw)
    _run(tiny_text, tmp_path / "split", max_steps=16, resume=True, **kw)
    _assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_resume_with_another_model_config_is_refused(tiny_text, tmp_path):
    _run(tiny_text, tmp_path / "run", max_steps=2)
    with pytest.raises(CheckpointError, match="embed_dim"):
        _run(tiny_text, tmp_path / "run", max_steps=4, resume=True, embed_dim=64)


def test_existing_run_needs_resume(tiny_text, tmp_path):
    _run(tiny_text, tmp_path / "run", max_steps=2)
    with pytest.raises(ConfigError, match="--resume"):
        _run(tiny_text, tmp_path / "run", max_steps=4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_text, tmp_path, monkeypatch):
    _run(tiny_text, tmp_path / "run", max_steps=10)
    good = (tmp_path / "run" / "model.safetensors").read_bytes()
    real_loss = trainer.train_step

    def poisoned(task, batches, optimizer, **kw):
        kw["loss_fn"] = lambda batch: task.loss(batch) * float("nan")
        return real_loss(task, batches, optimizer, **kw)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(trainer.TrainingDiverged, match="step 11.*step-00000010"):
        _run(tiny_text, tmp_path / "run", max_steps=20, resume=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == good


def test_interrupt_saves_a_checkpoint_that_resumes(tiny_text, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.WindowBatcher.next_batch

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self)

    # A cosine schedule over 16 steps, interrupted after step 5 (Ctrl-C) and resumed: the
    # result is bit-identical to the uninterrupted run.
    _run(tiny_text, tmp_path / "straight", max_steps=16)
    monkeypatch.setattr(trainer.WindowBatcher, "next_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_text, tmp_path / "run", max_steps=16)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000005"]
    monkeypatch.setattr(trainer.WindowBatcher, "next_batch", real)
    result = _run(tiny_text, tmp_path / "run", max_steps=16, resume=True)
    assert result["steps"] == 16
    _assert_same_run(tmp_path / "straight", tmp_path / "run")


@pytest.fixture
def ctrl_c():
    """Ctrl-C as in a terminal (a background job, e.g. under CI, may be started ignoring it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _signal_at_draw(monkeypatch, n, *signums):
    """Send this process `signums` right after the batcher's n-th draw; return the real draw."""
    calls = {"n": 0}
    real = trainer.WindowBatcher.next_batch

    def signalled(self):
        batch = real(self)
        calls["n"] += 1
        if calls["n"] == n:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return batch

    monkeypatch.setattr(trainer.WindowBatcher, "next_batch", signalled)
    return real


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_mid_step_finishes_the_step_and_resumes_exactly(
    tiny_text, tmp_path, monkeypatch, ctrl_c, signum
):
    # SIGTERM or a first Ctrl-C arrives after step 6 has drawn its first micro-batch (of 2): the
    # step still completes and is counted, so the checkpoint's batcher position matches its
    # step count.
    _run(tiny_text, tmp_path / "straight", max_steps=16, grad_accum=2)
    real = _signal_at_draw(monkeypatch, 11, signum)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_text, tmp_path / "run", max_steps=16, grad_accum=2)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000006"]
    monkeypatch.setattr(trainer.WindowBatcher, "next_batch", real)
    assert _run(tiny_text, tmp_path / "run", max_steps=16, grad_accum=2, resume=True)["steps"] == 16
    _assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_a_second_ctrl_c_stops_at_once_without_saving(tiny_text, tmp_path, monkeypatch, ctrl_c):
    _signal_at_draw(monkeypatch, 11, signal.SIGINT, signal.SIGINT)  # stop after this step; now
    with pytest.raises(trainer.StopNow):
        _run(tiny_text, tmp_path / "run", max_steps=16, grad_accum=2)
    assert list_checkpoints(tmp_path / "run") == []  # no half-done step was saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_ignored_ctrl_c_stays_ignored(tiny_text, tmp_path, monkeypatch):
    # a `nohup lmforge train ... &` job starts with SIGINT ignored: training keeps it so
    seen = []
    real = trainer.WindowBatcher.next_batch

    def watched(self):
        seen.append(signal.getsignal(signal.SIGINT))
        return real(self)

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        monkeypatch.setattr(trainer.WindowBatcher, "next_batch", watched)
        _run(tiny_text, tmp_path / "run", max_steps=2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen and all(h == signal.SIG_IGN for h in seen)


def test_compile_failure_falls_back_with_the_same_step_options(tiny_text, tmp_path, monkeypatch):
    # torch.compile fails at its first call; the eager retry must keep no_sync (DDP accumulation)
    def broken(loss_fn):
        def compiled(batch):
            raise RuntimeError("inductor: no C++ compiler")

        return compiled

    calls, real = [], trainer.train_step

    def spy(task, batches, optimizer, **kw):
        calls.append({k: v for k, v in kw.items() if k != "loss_fn"})
        return real(task, batches, optimizer, **kw)

    monkeypatch.setattr(loop, "_compiled", broken)
    monkeypatch.setattr(loop, "train_step", spy)
    assert _run(tiny_text, tmp_path / "run", max_steps=2, grad_accum=2, compile=True)["steps"] == 2
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2] and "no_sync" in calls[0]


def test_budgets(tiny_text, tmp_path):
    assert _run(tiny_text, tmp_path / "a", max_tokens=640)["steps"] == 10
    r = _run(tiny_text, tmp_path / "b", max_time="2s", eval_every=1000)
    assert r["elapsed_s"] >= 2.0 and r["steps"] > 0


def test_grad_accumulation_matches_bigger_batch():
    from lmforge.models.gpt import GPTCausalLM, GPTConfig

    cfg = GPTConfig(
        vocab_size=20, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=1, ffn_dim=32
    )
    torch.manual_seed(0)
    a = GPTCausalLM(cfg)
    b = GPTCausalLM(cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 20, (4, 8))
    batch = {"token_ids": x, "labels": x}
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    trainer.train_step(a, batch, opt_a)
    trainer.train_step(b, halves, opt_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_no_weight_decay_on_norms_biases_embeddings():
    from lmforge.models.gpt import GPTCausalLM, GPTConfig

    model = GPTCausalLM(GPTConfig(vocab_size=20, max_seq_len=8, embed_dim=16, num_heads=2))
    opt = trainer.make_optimizer(model, trainer.TrainConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for name, p in model.named_parameters():
        expect = p.ndim >= 2 and "emb" not in name and "norm" not in name
        assert (id(p) in decayed) == expect, name


@pytest.mark.parametrize("budget", [{"epochs": 1, "batching": "epochs"}, {"max_tokens": 640}])
def test_progress_bar_total_is_where_the_budget_ends(tiny_text, tmp_path, monkeypatch, budget):
    totals, real_bar = [], trainer.progress.bar

    def spy(*args, **kw):
        if kw.get("desc") == "train":
            totals.append(kw.get("total"))
        return real_bar(*args, **kw)

    monkeypatch.setattr(trainer.progress, "bar", spy)
    result = _run(tiny_text, tmp_path / "run", **budget)
    assert totals == [result["steps"]] and result["steps"] > 0


def test_warmup_then_cosine_ends_exactly_at_min_lr(tiny_text, tmp_path):
    # 4 warm-up steps are 10% of 40: the warm-up is not cut short (see schedules.WARMUP_SHARE)
    _run(tiny_text, tmp_path / "run", max_steps=40, warmup_steps=4, lr=1e-2, min_lr=1e-4)
    lrs = [r["lr"] for r in _metrics(tmp_path / "run") if "train_loss" in r]
    assert len(lrs) == 40
    assert lrs[:3] == pytest.approx([2.5e-3, 5e-3, 7.5e-3])  # linear warm-up ...
    assert 9.5e-3 < lrs[3] <= 1e-2  # ... to the peak, on the cosine from there
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))  # then a strictly falling cosine
    assert lrs[-1] == pytest.approx(1e-4, abs=1e-12)  # the last step runs at --min-lr


def test_keep_last_keeps_exactly_the_newest_checkpoints(tiny_text, tmp_path):
    # a checkpoint after each evaluation (every 5 steps) and at the end: 5, 10, ..., 25
    _run(tiny_text, tmp_path / "run", max_steps=25, eval_every=5, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step-00000020", "step-00000025"]
    _run(tiny_text, tmp_path / "run", max_steps=30, eval_every=5, keep_last=3, resume=True)
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step-00000020", "step-00000025", "step-00000030"]


@pytest.mark.parametrize("budget", ["max_steps", "epochs", "max_tokens"])
def test_a_zero_budget_raises_a_config_error(tiny_text, tmp_path, budget):
    with pytest.raises(ConfigError, match=f"--{budget.replace('_', '-')} 0 is not a budget"):
        _run(tiny_text, tmp_path / "run", **{budget: 0})
    assert not (tmp_path / "run").exists()


def test_a_short_budget_cuts_the_warmup_and_says_so(tiny_text, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="lmforge"):
        _run(tiny_text, tmp_path / "run", max_steps=20, warmup_steps=100, schedule="constant")
    lrs = [r["lr"] for r in _metrics(tmp_path / "run") if "lr" in r]
    # the schedule's progress at step s of 20 is s / 19 (the last step is at the budget's end)
    assert lrs[:2] == pytest.approx([3e-3 / 100, 3e-3 * (1 / 19) / 0.1])
    assert lrs[2:] == pytest.approx([3e-3] * 18)  # the peak from a tenth of the budget on
    assert "warm-up ends at step 2, not 100" in caplog.text


def test_a_time_budget_gives_the_bar_a_total_and_the_final_evaluation_is_announced(
    tiny_text, tmp_path, monkeypatch, caplog
):
    bars, real_bar = [], trainer.progress.bar

    def spy(*args, **kw):
        bars.append((kw.get("desc"), real_bar(*args, **kw)))
        return bars[-1][1]

    monkeypatch.setattr(trainer.progress, "bar", spy)
    with caplog.at_level("INFO", logger="lmforge"):
        result = _run(tiny_text, tmp_path / "run", max_time="1s", eval_every=1000)
    train_bar = next(b for desc, b in bars if desc == "train")
    assert train_bar.total == result["steps"] > 0  # the estimate ends where time ran out
    assert f"step {result['steps']}: budget spent; final evaluation on all" in caplog.text
    assert "not counted in the budget" in caplog.text


def _spoiled_after(step: int, monkeypatch):
    """train_step that wrecks the weights after `step` steps: the last model is the worst."""
    real, seen = trainer.train_step, {"n": 0}

    def spoiling(task, batches, optimizer, **kw):
        loss = real(task, batches, optimizer, **kw)
        seen["n"] += 1
        if seen["n"] > step:
            with torch.no_grad():
                for p in task.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
        return loss

    monkeypatch.setattr(loop, "train_step", spoiling)


def test_a_budgeted_run_keeps_its_best_model(tiny_text, tmp_path, monkeypatch):
    _spoiled_after(20, monkeypatch)
    run = tmp_path / "run"
    out = _run(tiny_text, run, max_tokens=30 * 4 * 16, eval_every=10, lr=1e-2)
    assert out["kept"] == "best" and out["best_step"] in (10, 20) and out["steps"] == 30
    assert out["val_loss"] < out["final_val_loss"]
    top = load_file(run / "model.safetensors")
    best = load_file(run / "best" / "model.safetensors")
    assert all(torch.equal(top[k], best[k]) for k in best)  # sample and eval see the best
    last = load_file(ckpt_dir(run, 30) / "model.safetensors")
    assert any(not torch.equal(top[k], last[k]) for k in last)  # resume sees the last
    scored = _eval_json(run)  # the kept model scores what the run reports (whole split)
    assert scored["loss"] == pytest.approx(out["val_loss"], rel=1e-4)


def _eval_json(run) -> dict:
    import contextlib
    import io

    from lmforge.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["eval", str(run), "--json", "--precision", "fp32"]) == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def ckpt_dir(run, step: int):
    return run / "checkpoints" / f"step-{step:08d}"


def test_keep_last_and_step_budgets_keep_the_last_model(tiny_text, tmp_path, monkeypatch):
    _spoiled_after(20, monkeypatch)
    for name, kw in (("last", dict(max_tokens=30 * 4 * 16, keep="last")), ("steps", {})):
        run = tmp_path / name
        out = _run(tiny_text, run, eval_every=10, lr=1e-2, **{"max_steps": 30, **kw})
        assert out["kept"] == "last" and out["best_step"] == 30
        assert out["val_loss"] == out["final_val_loss"]
        top = load_file(run / "model.safetensors")
        last = load_file(ckpt_dir(run, 30) / "model.safetensors")
        assert all(torch.equal(top[k], last[k]) for k in last)
