"""Budget-aware recipes: the size and dropout a --max-time / --max-tokens run picks, and how the
choice is printed, saved, reported, overridden and kept on --resume."""

import dataclasses
import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.models import char_rnn, gpt
from lmforge.presets import build_task, get_preset
from lmforge.training import budget
from lmforge.training.config import TrainConfig

SMALL = dict(num_layers=1, embed_dim=16, num_heads=2, ffn_dim=32)
LARGE = dict(num_layers=2, embed_dim=32, num_heads=2, ffn_dim=64)
# gpt-baby, shrunk to a 16-token context; its candidates are replaced by SMALL and LARGE below
TINY = ["--preset", "gpt-baby", "--max-seq-len", "16", "--batch-size", "4", "--threads", "1"]
TINY += ["--eval-every", "1000", "--eval-tokens", "256", "--tokenizer", "char"]


@pytest.fixture
def tiny_candidates(monkeypatch):
    monkeypatch.setitem(gpt.PRESETS["gpt-baby"], "candidates", [SMALL, LARGE])
    model_cfg = {**gpt.PRESETS["gpt-baby"]["config"], "vocab_size": 40, "max_seq_len": 16}
    return [build_task("gpt", {**model_cfg, **shape}).num_params() for shape in (SMALL, LARGE)]


def _choose(preset_name, explicit=(), rates=None, train_tokens=None, **train):
    preset = get_preset(preset_name)
    model_cfg = {**preset["config"], "dropout": 0.0}
    cfg = TrainConfig(preset=preset_name, **train)
    return budget.choose_recipe(
        cfg,
        preset,
        model_cfg,
        set(explicit),
        lambda c: build_task(preset["family"], c),
        torch.device("cpu"),
        128,
        rates=rates,
        train_tokens=train_tokens,
    )


def _train(argv, capsys, caplog) -> tuple[dict, list[str]]:
    """`lmforge train ARGV --json`'s result, and the "budget: ..." lines it logged."""
    caplog.clear()
    with caplog.at_level("INFO", logger="lmforge"):
        assert main(["train", *argv, "--json"]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("budget: ")]
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1]), said


def test_the_choice_follows_the_tokens_the_measured_throughput_buys():
    params = [
        build_task(
            "gpt", budget.candidate_model(get_preset("gpt-shakespeare")["config"], shape)
        ).num_params()
        for shape in get_preset("gpt-shakespeare")["candidates"]
    ]
    small, mid, large = params
    # slow machine: 6 x 192 gets half the tokens it needs, the small model is picked
    per_s = 0.5 * budget.MIN_TOKENS_PER_PARAM * mid / 600
    slow = [3 * per_s, per_s, per_s / 2]
    model, choice = _choose("gpt-shakespeare", rates=slow, max_time="10m")
    assert (model["num_layers"], model["embed_dim"]) == (4, 128) and model["dropout"] == 0.0
    assert choice == _choose("gpt-shakespeare", rates=slow, max_time="10m")[1]  # deterministic
    assert choice["tokens"] == int(slow[0] * 600) and choice["params"] == small
    # faster: 6 x 192 fed, 8 x 256 not (half a token per parameter)
    per_s = 2 * budget.MIN_TOKENS_PER_PARAM * mid / 600
    model, choice = _choose("gpt-shakespeare", rates=[3 * per_s, per_s, per_s / 2], max_time="10m")
    assert (model["num_layers"], model["embed_dim"], model["ffn_dim"]) == (6, 192, 768)
    assert model["dropout"] == 0.0 and choice["params"] == mid and choice["block_size"] == 256
    # fast machine: enough tokens for the largest, and past the dropout band
    per_s = budget.DROPOUT_TOKENS_PER_PARAM * large / 600 * 1.01
    rates = [3 * per_s, 2 * per_s, per_s]
    model, choice = _choose("gpt-shakespeare", rates=rates, max_time="10m")
    assert (model["num_layers"], model["embed_dim"], model["ffn_dim"]) == (8, 256, 1024)
    assert model["dropout"] == budget.DROPOUT and choice["tokens_per_param"] >= 8
    assert choice["reason"].startswith("budget: 10 min at ~")
    assert "8 x 256 (of 4 x 128, 6 x 192, 8 x 256)" in choice["reason"]
    assert "dropout 0.1" in choice["reason"]


def test_weight_decay_rises_once_the_budget_reads_the_data_many_times():
    preset_decay = get_preset("gpt-shakespeare")["train"]["weight_decay"]
    assert preset_decay < budget.WEIGHT_DECAY
    data = 1_000_000  # training tokens
    for passes, decay in ((2.0, preset_decay), (budget.DECAY_EPOCHS, 0.5), (6.0, 0.5)):
        tokens = int(passes * data)
        model, choice = _choose("gpt-shakespeare", train_tokens=data, max_tokens=tokens)
        assert choice["weight_decay"] == decay and choice["epochs"] == passes
        assert (
            f"weight decay {decay:g}" in choice["reason"]
            and f"{passes:g} passes" in choice["reason"]
        )
    _, choice = _choose("gpt-shakespeare", max_tokens=6 * data)  # data size unknown: the preset's
    assert choice["weight_decay"] == preset_decay and choice["epochs"] is None
    _, choice = _choose("gpt-shakespeare", {"weight_decay"}, train_tokens=data, max_tokens=6 * data)
    assert choice["weight_decay"] == preset_decay  # the user's --weight-decay wins


def test_dropout_comes_with_many_passes_and_spares_the_attention():
    """Past DROPOUT_EPOCHS passes a fed candidate gets dropout even under 8 tokens/parameter, on
    the embeddings and residual branches only (attention_dropout 0 keeps SDPA's fused kernel)."""
    data = 500_000  # training tokens: 8 passes feed 6 x 192, not 8 x 256
    for passes, dropout in ((budget.DROPOUT_EPOCHS - 1, 0.0), (budget.DROPOUT_EPOCHS, 0.1)):
        model, choice = _choose("gpt-shakespeare", train_tokens=data, max_tokens=int(passes * data))
        assert model["embed_dim"] == 192 and choice["epochs"] == passes
        assert choice["tokens_per_param"] < budget.DROPOUT_TOKENS_PER_PARAM
        assert model["dropout"] == choice["dropout"] == dropout
    assert model["attention_dropout"] == choice["attention_dropout"] == 0.0
    assert "dropout 0.1 (attention 0), weight decay 0.5" in choice["reason"]
    task = build_task("gpt", model)
    block = task.backbone.blocks[0]
    assert (block.attn.dropout, block.attn_dropout.p, block.ffn.dropout.p) == (0.0, 0.1, 0.1)
    assert task.backbone.embed.dropout.p == 0.1
    # the user's --attention-dropout wins; the data size unknown: tokens per parameter alone
    args = dict(train_tokens=data, max_tokens=8 * data)
    model, choice = _choose("gpt-shakespeare", {"attention_dropout"}, **args)
    assert model["dropout"] == 0.1 and "attention_dropout" not in model
    assert "attention_dropout" not in choice and "dropout 0.1, weight" in choice["reason"]
    model, _ = _choose("llama-shakespeare", **args)
    assert model["dropout"] == 0.1 and model["attention_dropout"] == 0.0
    model, choice = _choose("gpt-shakespeare", max_tokens=8 * data)
    assert model["dropout"] == 0.0 and choice["epochs"] is None


def test_a_token_budget_needs_no_probe_and_the_smaller_of_both_budgets_counts(monkeypatch):
    monkeypatch.setattr(budget, "probe_throughput", None)  # calling it would fail
    model, choice = _choose("gpt-shakespeare", max_tokens=500_000)
    assert model["embed_dim"] == 128 and choice["tokens"] == 500_000
    assert choice["tokens_per_s"] is None and choice["reason"].startswith("budget: 500k tokens:")
    _, both = _choose("gpt-shakespeare", rates=[1e6] * 3, max_tokens=500_000, max_time="10m")
    assert both["tokens"] == 500_000


def test_explicit_flags_win_over_the_choice():
    huge = [1e7] * 3  # tokens enough for the largest model with dropout
    model, choice = _choose("gpt-shakespeare", {"embed_dim"}, huge, max_time="10m")
    assert model["embed_dim"] == 128 and len(choice["candidates"]) == 1  # the user's size alone
    assert model["dropout"] == budget.DROPOUT
    model, _ = _choose("gpt-shakespeare", {"dropout"}, huge, max_time="10m")
    assert model["embed_dim"] == 256 and model["dropout"] == 0.0


def test_canon_layers_come_with_the_candidate_and_a_users_canon_holds_for_every_one():
    """gpt-shakespeare's Canon layers stay on 4 x 128; --canon sets them for any size the budget
    still picks."""
    slow, fast = [1e3] * 3, [1e7] * 3  # 4 x 128, or 8 x 256
    model, choice = _choose("gpt-shakespeare", rates=slow, max_time="10m")
    assert (model["embed_dim"], model["canon"]) == (128, 4)
    model, choice = _choose("gpt-shakespeare", rates=fast, max_time="10m")
    assert (model["embed_dim"], model["canon"]) == (256, 0)
    assert [c.get("canon") for c in choice["candidates"]] == [None, 0, 0]
    for rates, width in ((slow, 128), (fast, 256)):
        model_cfg = {**get_preset("gpt-shakespeare")["config"], "dropout": 0.0, "canon": 3}
        preset = get_preset("gpt-shakespeare")
        model, choice = budget.choose_recipe(
            TrainConfig(preset="gpt-shakespeare", max_time="10m"),
            preset,
            model_cfg,
            {"canon"},
            lambda c: build_task("gpt", c),
            torch.device("cpu"),
            128,
            rates=rates,
        )
        assert (model["embed_dim"], model["canon"]) == (width, 3)  # the size is still chosen
        assert len(choice["candidates"]) == 3


def test_a_long_time_budget_on_a_cpu_compiles_the_model():
    rates = [1e4] * 3
    for name in ("gpt-shakespeare", "llama-shakespeare"):
        _, choice = _choose(name, rates=rates, max_time="10m")
        assert choice["compile"] is True and ", torch.compile (" in choice["reason"]
        _, short = _choose(name, rates=rates, max_time="90s")  # 20 s of compiling would not pay
        assert short["compile"] is False and "torch.compile" not in short["reason"]
    _, tokens = _choose("gpt-shakespeare", max_tokens=10**7)  # no time budget: as asked
    assert tokens["compile"] is False
    _, asked = _choose("gpt-shakespeare", {"compile"}, rates, max_time="10m", compile=False)
    assert asked["compile"] is False  # --no-compile wins
    _, rnn = _choose(RNN, rates=rates, max_time="10m")  # no compile rule for the char RNNs
    assert rnn["compile"] is False


def test_the_chosen_compile_reaches_the_loop_and_config(
    tiny_text, tmp_path, capsys, caplog, tiny_candidates, monkeypatch
):
    from lmforge.training import loop

    compiled = []

    def record(loss_fn):  # stands in for torch.compile (minutes of inductor in a unit test)
        compiled.append(loss_fn)
        return loss_fn

    monkeypatch.setattr(loop, "_compiled", record)
    rule = dataclasses.replace(budget.TRANSFORMER_RULE, compile_min_seconds=1.0)
    monkeypatch.setattr(budget, "TRANSFORMER_RULE", rule)
    argv = ["--data", str(tiny_text), *TINY, "--max-time", "4s"]  # LARGE fed eagerly
    result, said = _train([*argv, "--out", str(tmp_path / "a")], capsys, caplog)
    assert result["auto_choice"]["compile"] is True and "torch.compile" in said[0]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["compile"] is True
    assert result["auto_choice"]["embed_dim"] == LARGE["embed_dim"]
    assert len(compiled) == 2  # the probe times the pick compiled, then the run compiles
    # the budget pays for the probe's compile (the run's own then comes from its cache): the
    # run's clock starts at it
    spent = result["auto_choice"]["compile_s"]
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < spent <= 1.0 and first["elapsed_s"] >= spent and result["elapsed_s"] >= spent
    result, said = _train([*argv, "--no-compile", "--out", str(tmp_path / "b")], capsys, caplog)
    assert result["auto_choice"]["compile"] is False and len(compiled) == 2


def test_a_candidate_with_a_context_of_its_own_is_timed_and_trained_at_it(monkeypatch):
    calls = []

    def probe(tasks, cfg, device, block_size, vocab, seconds, compiled=False):
        calls.append((cfg.batch_size, block_size, [t.config.max_seq_len for t in tasks]))
        return [1e4] * len(tasks)

    monkeypatch.setattr(budget, "probe_throughput", probe)
    # gpt-shakespeare's 8 x 256 reads context 512 at batch 3: at 6M tokens it is not fed, but
    # could be if compiling doubled its rate, so it is timed compiled too before 6 x 192 is
    larger = [(3, 512, [512]), (3, 512, [512])]
    for name, more in (("gpt-shakespeare", larger), ("llama-shakespeare", [])):
        calls.clear()
        model, choice = _choose(name, max_time="10m")  # 6M tokens: 6 x 192 is fed, 8 x 256 not
        # each at its own batch and block, then the pick again compiled, as it will train
        assert calls == [(12, 128, [128]), (6, 256, [256]), *more, (6, 256, [256])]
        assert model["embed_dim"] == 192 and model["max_seq_len"] == 256
        assert (choice["batch_size"], choice["block_size"]) == (6, 256)
        assert "6 x 192 (of 4 x 128, 6 x 192" in choice["reason"]
        assert "), context 256 at batch 6," in choice["reason"]
        model, choice = _choose(name, rates=[1e3] * 3, max_time="10m")  # 4 x 128: the run's
        assert model["embed_dim"] == 128 and model["max_seq_len"] == 128
        assert "block_size" not in choice and "context" not in choice["reason"]
    for given in ("block_size", "max_seq_len", "batch_size", "global_batch_size"):
        model, choice = _choose("gpt-shakespeare", {given}, [1e4] * 3, max_time="10m")
        assert model["embed_dim"] == 192 and model["max_seq_len"] == 128  # the user's context
        assert "block_size" not in choice


def test_the_chosen_context_reaches_the_run(tiny_text, tmp_path, capsys, caplog, monkeypatch):
    long_ = {**LARGE, "max_seq_len": 32, "batch_size": 2}
    monkeypatch.setitem(gpt.PRESETS["gpt-baby"], "candidates", [SMALL, long_])
    model_cfg = {**gpt.PRESETS["gpt-baby"]["config"], "vocab_size": 40, **long_}
    model_cfg.pop("batch_size")
    tokens = 2 * build_task("gpt", model_cfg).num_params()  # 2 per parameter: the large one
    out = tmp_path / "run"
    argv = ["--data", str(tiny_text), "--preset", "gpt-baby", "--tokenizer", "char"]
    argv += ["--threads", "1", "--eval-every", "1000", "--eval-tokens", "256"]
    result, said = _train([*argv, "--max-tokens", str(tokens), "--out", str(out)], capsys, caplog)
    assert (result["auto_choice"]["block_size"], result["auto_choice"]["batch_size"]) == (32, 2)
    assert "context 32 at batch 2" in said[0]
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["max_seq_len"] == 32 and config["data"]["block_size"] == 32
    assert config["train"]["batch_size"] == 2 and config["train"]["block_size"] == 32


def test_every_candidate_builds_in_its_preset():
    for name in (
        "gpt-baby",
        "gpt-shakespeare",
        "llama-shakespeare",
        RNN,
        "char-rnn-gru-shakespeare",
    ):
        preset = get_preset(name)
        for shape in preset["candidates"]:
            task = build_task(preset["family"], budget.candidate_model(preset["config"], shape))
            assert task.num_params() > 0


def test_a_time_budget_probes_prints_saves_and_reports_its_choice(
    tiny_text, tmp_path, capsys, caplog, tiny_candidates
):
    out = tmp_path / "run"
    result, said = _train(
        ["--data", str(tiny_text), *TINY, "--max-time", "3s", "--out", str(out)], capsys, caplog
    )
    choice = result["auto_choice"]
    assert said == [choice["reason"]] and "3 s at ~" in said[0]
    assert choice["tokens_per_s"] > 0 and len(choice["candidates"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["auto_choice"] == choice
    picked = {k: config["model"][k] for k in SMALL}
    assert picked == {k: choice[k] for k in SMALL} and picked in (SMALL, LARGE)
    assert result["steps"] > 0 and result["elapsed_s"] < 10


def test_resume_keeps_the_choice_without_probing_again(
    tiny_text, tmp_path, capsys, caplog, tiny_candidates, monkeypatch
):
    out = tmp_path / "run"
    argv = ["--data", str(tiny_text), *TINY, "--out", str(out)]
    budget_tokens = 2 * tiny_candidates[1]  # 2 tokens per parameter of the larger one
    # decay from 1 pass over the ~20 KB text here (this budget reads it ~2 times), so the run's
    # chosen weight decay differs from the preset's and must be what the resumed run uses
    rule = dataclasses.replace(budget.TRANSFORMER_RULE, decay_epochs=1.0)
    monkeypatch.setattr(budget, "TRANSFORMER_RULE", rule)
    first, _ = _train([*argv, "--max-tokens", str(budget_tokens)], capsys, caplog)
    assert {k: first["auto_choice"][k] for k in LARGE} == LARGE
    config = json.loads((out / "config.json").read_text())
    assert first["auto_choice"]["epochs"] >= 1.0
    assert config["train"]["weight_decay"] == first["auto_choice"]["weight_decay"] == 0.5

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run must not probe")

    monkeypatch.setattr(budget, "probe_throughput", no_probe)
    monkeypatch.setattr(budget, "choose_recipe", no_probe)
    total = str(budget_tokens + 4000)
    again, said = _train(["--out", str(out), "--resume", "--max-tokens", total], capsys, caplog)
    assert again["auto_choice"] == first["auto_choice"] and not said
    after = json.loads((out / "config.json").read_text())
    assert after["model"] == config["model"] and after["auto_choice"] == config["auto_choice"]
    assert after["train"]["weight_decay"] == 0.5  # the chosen decay goes on
    assert again["tokens"] > first["tokens"]


def test_no_auto_keeps_the_presets_recipe(tiny_text, tmp_path, capsys, caplog, tiny_candidates):
    out = tmp_path / "run"
    result, said = _train(
        ["--data", str(tiny_text), *TINY, "--max-tokens", "2000", "--no-auto", "--out", str(out)],
        capsys,
        caplog,
    )
    config = json.loads((out / "config.json").read_text())
    assert result["auto_choice"] is None and "auto_choice" not in config and not said
    assert config["model"]["embed_dim"] == 128 and config["train"]["auto"] is False


def test_a_choice_with_dropout_is_timed_again_with_dropout(monkeypatch):
    calls = []

    def probe(tasks, cfg, device, block_size, vocab, seconds, compiled=False):
        calls.append(([t.config.dropout for t in tasks], compiled))
        return [1e6 if t.config.dropout == 0 else 2e4 for t in tasks]  # dropout: a slower step

    monkeypatch.setattr(budget, "probe_throughput", probe)
    model, choice = _choose("gpt-shakespeare", max_time="4m")
    # a probe per context (128, 256, 512), then the choice with dropout
    assert calls == [([0.0], False)] * 3 + [([budget.DROPOUT], False)]
    assert model["embed_dim"] == 256 and model["dropout"] == budget.DROPOUT
    assert choice["tokens_per_s"] == 20_000 and choice["tokens"] == 4_800_000


def test_a_compiled_run_is_timed_compiled_and_its_tokens_decide_the_dropout(monkeypatch):
    """The candidates are timed eagerly; the pick again compiled when the run will compile: its
    faster steps read more passes, which may cross the dropout line the eager rate fell short of."""
    calls = []
    eager, speedup = 4_500, 1.6  # 8 x 256 in bf16 on the AMX Xeon: ~4.5k tok/s eager, 1.5-1.7x

    def probe(tasks, cfg, device, block_size, vocab, seconds, compiled=False):
        calls.append(([t.config.dropout for t in tasks], compiled))
        return [eager * (speedup if compiled else 1.0)] * len(tasks)

    monkeypatch.setattr(budget, "probe_throughput", probe)
    data = 1_200_000  # 30 min eagerly: 8.1M tokens, 6.75 passes; compiled: 13M, 10.8 passes
    model, choice = _choose("gpt-shakespeare", max_time="30m", train_tokens=data)
    assert calls == [([0.0], False)] * 3 + [([0.0], True)]
    assert model["embed_dim"] == 256 and choice["compile"] is True
    assert choice["tokens_per_s"] == eager * speedup and choice["epochs"] == 10.8
    assert model["dropout"] == choice["dropout"] == budget.DROPOUT
    assert "10.8 passes" in choice["reason"] and "~7.2k tok/s" in choice["reason"]
    assert 0 <= choice["compile_s"] < 1  # the fake probe's time, charged to the budget
    calls.clear()  # --no-compile: no compiled probe, and the eager passes stay under the line
    model, choice = _choose("gpt-shakespeare", {"compile"}, max_time="30m", train_tokens=data)
    assert calls == [([0.0], False)] * 3 and model["dropout"] == 0.0
    assert "compile_s" not in choice


def test_a_larger_candidate_compiling_could_feed_is_timed_compiled(monkeypatch):
    """Compiling speeds candidates up unevenly (8 x 256 at context 512 most: only compiled code
    has lmforge's attention backward), so the eager rates alone would pass over a size the run
    can feed; one that even twice its eager rate (1.3x in fp32) would leave unfed costs no
    compile."""
    monkeypatch.setattr(budget.devices, "resolve_precision", lambda p, d, task: "bf16")
    calls = []
    eager = {128: 14_000, 192: 6_000, 256: 3_400}  # tok/s on the Xeon, as measured
    gain = {128: 1.2, 192: 1.16, 256: 1.5}

    def probe(tasks, cfg, device, block_size, vocab, seconds, compiled=False):
        calls.append([(t.config.embed_dim, t.config.dropout, compiled) for t in tasks])
        return [
            eager[t.config.embed_dim] * (gain[t.config.embed_dim] if compiled else 1) for t in tasks
        ]

    monkeypatch.setattr(budget, "probe_throughput", probe)
    data = 1_000_000
    # 30 min: eagerly 6.1M tokens for 6.3M parameters; compiled 9.2M, 9.2 passes: dropout
    model, choice = _choose("gpt-shakespeare", max_time="30m", train_tokens=data)
    assert calls[3:] == [[(256, budget.DROPOUT, True)]]  # as it will train, and no other
    assert (model["embed_dim"], model["max_seq_len"], model["dropout"]) == (256, 512, 0.1)
    assert choice["tokens_per_s"] == 5_100 and choice["tokens"] == 9_180_000
    assert (choice["batch_size"], choice["block_size"]) == (3, 512)
    assert [c["tokens_per_s"] for c in choice["candidates"]] == [14_000, 6_000, 5_100]
    assert 0 <= choice["compile_s"] < 1
    # 10 min: 2.0M tokens eagerly, 4.1M if compiling doubled them: 8 x 256 is not compiled
    calls.clear()
    model, choice = _choose("gpt-shakespeare", max_time="10m", train_tokens=data)
    assert calls[3:] == [[(192, 0.0, True)]] and model["embed_dim"] == 192
    # compiled, 8 x 256 still falls short: timed, charged, and 6 x 192 timed compiled after it
    gain[256] = 1.02
    calls.clear()
    model, choice = _choose("gpt-shakespeare", max_time="30m", train_tokens=data)
    # (timed with the dropout twice its eager tokens would bring: 12.2 passes)
    assert calls[3:] == [[(256, budget.DROPOUT, True)], [(192, budget.DROPOUT, True)]]
    assert model["embed_dim"] == 192 and choice["candidates"][2]["tokens_per_s"] == 3_468
    # 4.5M tokens eagerly: bf16's 2x could feed 8 x 256, fp32's 1.3x (5.9M) could not
    eager[256], gain[256] = 2_500, 1.5
    for precision, width in (("bf16", 256), ("fp32", 192)):
        monkeypatch.setattr(budget.devices, "resolve_precision", lambda p, d, t, x=precision: x)
        calls.clear()
        model, choice = _choose("gpt-shakespeare", max_time="30m", train_tokens=data)
        # bf16: 8 x 256 timed compiled and fed (6.75M tokens); fp32: only the pick, 6 x 192
        assert calls[3:] == [[(width, budget.DROPOUT, True)]] and model["embed_dim"] == width


# ---------------------------------------------------------------- char RNN

RNN = "char-rnn-lstm-shakespeare"
# the LSTM preset, shrunk: a 16-token context, batches of 4; its candidates become 8 and 16 units
TINY_RNN = ["--preset", RNN, "--embed-dim", "8", "--block-size", "16", "--batch-size", "4"]
TINY_RNN += ["--threads", "1", "--eval-every", "1000", "--eval-tokens", "256"]
UNITS = [dict(hidden_dim=8), dict(hidden_dim=16)]


@pytest.fixture
def rnn_candidates(monkeypatch, tiny_text):
    """The tiny units' parameter counts on tiny_text's characters (the run's vocabulary)."""
    monkeypatch.setitem(char_rnn.PRESETS[RNN], "candidates", UNITS)
    vocab = len(set(tiny_text.read_text()))
    model_cfg = {**char_rnn.PRESETS[RNN]["config"], "vocab_size": vocab, "embed_dim": 8}
    return [build_task("char_rnn", {**model_cfg, **shape}).num_params() for shape in UNITS]


def test_a_char_rnn_takes_the_rnn_rule_and_says_so_in_units():
    rule = budget.RULES["char_rnn"]
    preset = get_preset(RNN)
    params = [
        build_task("char_rnn", {**preset["config"], **shape}).num_params()
        for shape in preset["candidates"]
    ]
    assert params == sorted(params)
    # each candidate in turn is the largest one its tokens feed (the rates of a time budget)
    for i, shape in enumerate(preset["candidates"]):
        rates = [1.01 * rule.min_tokens_per_param * p / 600 for p in params]
        rates[i + 1 :] = [0.5 * r for r in rates[i + 1 :]]  # the larger ones: half what they need
        model, choice = _choose(RNN, rates=rates, max_time="10m")
        assert model["hidden_dim"] == shape["hidden_dim"] == choice["hidden_dim"]
        assert choice["params"] == params[i] and model["cell"] == "lstm"
        assert f"{shape['hidden_dim']} units (of 256 units, 512 units)" in choice["reason"]
    # past the RNN's dropout band: the largest, with the RNN's dropout
    tokens = 1.01 * rule.dropout_tokens_per_param * params[-1]
    model, choice = _choose(RNN, max_tokens=int(tokens))
    assert model["hidden_dim"] == 512 and model["dropout"] == rule.dropout
    assert choice["tokens_per_s"] is None and f"dropout {rule.dropout:g}" in choice["reason"]
    # too few tokens for any of them: the smallest, no dropout
    model, choice = _choose(RNN, max_tokens=1000)
    assert model["hidden_dim"] == 256 and model["dropout"] == 0.0


def test_a_char_rnn_run_with_max_tokens_picks_saves_and_resumes_its_units(
    tiny_text, tmp_path, capsys, caplog, rnn_candidates, monkeypatch
):
    small, large = rnn_candidates
    min_per_param = budget.RULES["char_rnn"].min_tokens_per_param
    out = tmp_path / "run"
    argv = ["--data", str(tiny_text), *TINY_RNN, "--out", str(out)]
    tokens = int(min_per_param * large) + 64  # feeds 16 units, not past the dropout band
    first, said = _train([*argv, "--max-tokens", str(tokens)], capsys, caplog)
    choice = first["auto_choice"]
    assert choice["hidden_dim"] == 16 and choice["params"] == large and choice["dropout"] == 0.0
    assert [c["params"] for c in choice["candidates"]] == [small, large]
    assert said == [choice["reason"]] and "tokens: 16 units (of 8 units, 16 units)" in said[0]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_choice"] == choice and config["model"]["hidden_dim"] == 16
    assert config["model"]["embed_dim"] == 8 and config["model"]["cell"] == "lstm"

    monkeypatch.setattr(budget, "choose_recipe", None)  # a resumed run must not choose again
    more = str(tokens + 640)
    again, said = _train(["--out", str(out), "--resume", "--max-tokens", more], capsys, caplog)
    assert again["auto_choice"] == choice and not said and again["tokens"] > first["tokens"]
    assert json.loads((out / "config.json").read_text())["model"] == config["model"]


def test_explicit_units_or_no_auto_keep_a_char_rnn_as_asked(
    tiny_text, tmp_path, capsys, caplog, rnn_candidates, monkeypatch
):
    tokens = str(int(budget.RULES["char_rnn"].min_tokens_per_param * rnn_candidates[1]) + 64)
    base = ["--data", str(tiny_text), *TINY_RNN, "--max-tokens", tokens]
    result, said = _train(
        [*base, "--hidden-dim", "8", "--out", str(tmp_path / "a")], capsys, caplog
    )
    choice = result["auto_choice"]
    assert choice["hidden_dim"] == 8 and len(choice["candidates"]) == 1 and len(said) == 1
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["hidden_dim"] == 8

    monkeypatch.setitem(char_rnn.PRESETS[RNN]["config"], "hidden_dim", 12)  # not 1024: fast
    off = tmp_path / "b"
    result, said = _train([*base, "--no-auto", "--out", str(off)], capsys, caplog)
    config = json.loads((off / "config.json").read_text())
    assert result["auto_choice"] is None and "auto_choice" not in config and not said
    assert config["model"]["hidden_dim"] == 12 and config["train"]["auto"] is False


def test_the_compiled_probe_times_compiled_steps_and_survives_a_failed_compile(monkeypatch, caplog):
    from lmforge.training import loop

    model_cfg = {**gpt.PRESETS["gpt-baby"]["config"], "vocab_size": 40, "max_seq_len": 16}
    cfg = TrainConfig(preset="gpt-baby", batch_size=2, precision="fp32")

    def rate(compiled: bool) -> float:
        task = build_task("gpt", {**model_cfg, **SMALL})
        (tok_s,) = budget.probe_throughput([task], cfg, torch.device("cpu"), 16, 40, 1, compiled)
        return tok_s

    compiled_with = []

    def record(loss_fn):
        compiled_with.append(loss_fn)
        return torch.compile(loss_fn)

    monkeypatch.setattr(loop, "_compiled", record)
    assert rate(True) > 0 and len(compiled_with) == 1  # a real torch.compile, timed after it

    def broken(loss_fn):
        def fails(batch):
            raise RuntimeError("inductor: no C++ compiler\nmore")

        return fails

    monkeypatch.setattr(loop, "_compiled", broken)
    with caplog.at_level("WARNING", logger="lmforge"):
        assert rate(True) > 0  # timed eagerly instead, as the run then trains
    assert "torch.compile failed in the probe (inductor: no C++ compiler)" in caplog.text
