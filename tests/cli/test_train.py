"""`lmforge train`, `sample`, `eval` and `presets` from the command line, bad input included."""

import json
import subprocess
import sys

import pytest

from lmforge.cli.main import main
from lmforge.device import aten_held_below_avx512

TINY = [
    "--preset",
    "gpt-baby",
    "--num-layers",
    "1",
    "--embed-dim",
    "32",
    "--num-heads",
    "2",
    "--ffn-dim",
    "64",
    "--max-seq-len",
    "16",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--eval-every",
    "1000",
    "--eval-tokens",
    "256",
]


@pytest.fixture
def run(tiny_text, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tiny_text),
            "--tokenizer",
            "char",
            *TINY,
            "--max-steps",
            "20",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"val_loss", "train_loss", "steps", "tokens", "tokens_per_s"} <= result.keys()
    assert result["steps"] == 20
    # `--precision auto` (the default): a 32-wide model runs fp32 even where bf16 units exist
    assert result["precision"] == "fp32"
    return out


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_resume_continues_to_the_total_step_count(run, tiny_text, capsys):
    code = main(
        [
            "train",
            "--data",
            str(tiny_text),
            "--tokenizer",
            "char",
            *TINY,
            "--max-steps",
            "30",
            "--out",
            str(run),
            "--resume",
            "--json",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 30


def test_resume_with_out_alone_keeps_the_runs_data_and_refuses_a_new_lr(run, capsys):
    config = json.loads((run / "config.json").read_text())
    err = _error(capsys, ["train", "--out", str(run), "--resume", "--lr", "0.5"])
    assert "lr would change" in err and "drop --lr" in err
    assert json.loads((run / "config.json").read_text()) == config
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 25
    after = json.loads((run / "config.json").read_text())
    assert after["train"]["data"] == config["train"]["data"] and after["model"] == config["model"]
    assert after["resumes"] == [{"step": 20, "changed": {"max_steps": [20, 25]}}]


def test_a_run_saved_before_a_config_field_existed_resumes_as_it_was_made(tiny_text, tmp_path):
    """A gpt-shakespeare run from before its Canon layers (no "canon" in config.json) resumes
    without them, though the preset has them now."""
    out = tmp_path / "old"
    shape = ["--num-layers", "1", "--embed-dim", "32", "--num-heads", "2", "--ffn-dim", "64"]
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", "--preset", "gpt-shakespeare"]
    argv += [*shape, "--max-seq-len", "16", "--batch-size", "4", "--threads", "1", "--no-auto"]
    argv += ["--eval-every", "1000", "--eval-tokens", "256", "--out", str(out)]
    assert main([*argv, "--canon", "0", "--max-steps", "4"]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["model"]["canon"]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "6"]) == 0
    after = json.loads((out / "config.json").read_text())
    assert after["model"].get("canon", 0) == 0 and after["resumes"][-1]["step"] == 4


def test_sample_and_eval(run, capsys):
    assert (
        main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1"])
        == 0
    )
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) > len("ROMEO:")
    assert (
        main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1"])
        == 0
    )
    assert capsys.readouterr().out == first  # same seed, same text
    assert (
        main(
            [
                "sample",
                str(run),
                "--prompt",
                "JULIET:",
                "--max-new-tokens",
                "10",
                "--num-samples",
                "3",
                "--seed",
                "2",
                "--top-k",
                "5",
                "--top-p",
                "0.9",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count("--- sample") == 3
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)
    assert result["bits_per_char"] > 0


def test_config_file_with_flags_overriding(tiny_text, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {tiny_text}\ntokenizer: char\nmax_steps: 3\nembed_dim: 32\n")
    out = tmp_path / "r"
    assert (
        main(
            ["train", "--config", str(cfg), *TINY, "--max-steps", "5", "--out", str(out), "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 5
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["max_steps"] == 5 and saved["model"]["embed_dim"] == 32


def test_help_shows_the_default_presets_values_not_the_dataclass_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for flag, value in [("lr", "0.008"), ("optimizer", "muon"), ("embed-dim", "128")]:
        assert f"--{flag} " in text
        assert f"(default: the preset's; gpt-baby: {value})" in text, flag
    for dataclass_default in ("(default: 0.001)", "(default: adamw)", "(default: 64)"):
        assert dataclass_default not in text
    assert "(default: the preset's)" in text  # a bert field the default preset does not set


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt-tiny-wine", "gpt-baby", "gpt-shakespeare", "gpt2", "distilgpt2"):
        assert name in out


def test_bad_input(run, tiny_text, tmp_path, capsys):
    base = ["train", "--data", str(tiny_text), "--tokenizer", "char", "--max-steps", "1"]
    assert "gpt-baby" in _error(capsys, [*base, "--preset", "nope", "--out", str(tmp_path / "a")])
    assert "divisible" in _error(
        capsys, [*base, *TINY, "--num-heads", "7", "--out", str(tmp_path / "b")]
    )
    assert "must be" in _error(
        capsys, [*base, *TINY, "--num-layers", "0", "--out", str(tmp_path / "c")]
    )
    assert "fewer than one block" in _error(
        capsys, [*base, *TINY, "--max-seq-len", "100000", "--out", str(tmp_path / "d")]
    )
    assert "does not exist" in _error(capsys, ["sample", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "config.json" in _error(capsys, ["sample", str(tmp_path / "empty")])
    old = json.loads((run / "config.json").read_text())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({**old, "lmforge_version": "9.0"}))
    assert "incompatible" in _error(capsys, ["sample", str(tmp_path / "old")])
    assert "embed_dim" in _error(
        capsys, [*base, *TINY, "--embed-dim", "64", "--out", str(run), "--resume"]
    )
    err = _error(capsys, ["sample", str(run), "--prompt", "ROMEO: é"])
    assert "'é'" in err and "--unknown-token" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1,\n")
    assert "bad.yaml" in _error(capsys, ["train", "--config", str(bad)])
    assert "bad.yaml" in _error(capsys, ["sample", str(run), "--config", str(bad)])
    assert "--resume" in _error(capsys, [*base, *TINY, "--out", str(run)])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_default_out_is_a_new_folder_for_each_run(tiny_text, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", *TINY, "--max-steps", "2"]
    said = []
    for _ in range(2):  # runs/latest worked once: the second run was refused
        capsys.readouterr()
        assert main(argv) == 0
        said.append(capsys.readouterr().out.strip().splitlines()[-1])
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(p.name.startswith("gpt-baby-") for p in runs)
    assert all((p / "model.safetensors").is_file() for p in runs)
    assert {line.rsplit("run saved in ", 1)[1] for line in said} == {f"runs/{p.name}" for p in runs}


@pytest.mark.parametrize(
    "budget",
    [["--epochs", "0"], ["--max-steps", "0"], ["--max-tokens", "-5"], ["--max-time", "0s"]],
)
def test_a_budget_of_zero_or_less_is_refused(tiny_text, tmp_path, capsys, budget):
    out = tmp_path / "run"
    err = _error(capsys, ["train", "--data", str(tiny_text), *TINY, *budget, "--out", str(out)])
    assert budget[0] in err or "duration" in err
    assert "positive" in err and not out.exists()


HOLD_LOCK = """
import sys, time
from lmforge.run_folder import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_being_trained_refuses_a_second_writer_not_readers(run, tiny_text, capsys):
    resume = ["train", "--data", str(tiny_text), *TINY, "--max-steps", "24", "--out", str(run)]
    resume += ["--resume", "--json"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        err = _error(capsys, resume)
        assert f"pid {holder.pid}" in err and "--out" in err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
        assert main(["sample", str(run), "--max-new-tokens", "5", "--seed", "1"]) == 0
        assert main(["eval", str(run), "--json"]) == 0
        capsys.readouterr()
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays behind ...
        holder.wait()
    assert (run / ".lock").is_file()
    assert main(resume) == 0  # ... and the lock of a dead process does not block
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 24
    assert not (run / ".lock").exists()


def test_train_ignores_config_keys_that_other_verbs_own(tiny_text, tmp_path, capsys):
    config = tmp_path / "run.yaml"  # one file for every verb: sampling keys beside training keys
    config.write_text("prompt: 'ROMEO:'\nmax_new_tokens: 20\nmax_steps: 3\n")
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", *TINY]
    assert main([*argv, "--config", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    config.write_text("promt: 'ROMEO:'\n")  # a key no verb has is still refused
    err = _error(capsys, [*argv, "--config", str(config), "--out", str(tmp_path / "other")])
    assert "'promt'" in err


def test_bf16_training_runs_where_asked(tiny_text, tmp_path, capsys):
    """auto keeps tiny models in fp32, so the bf16 path is exercised here, by name."""
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", *TINY, "--max-steps", "4"]
    argv += ["--precision", "bf16", "--out", str(tmp_path / "run"), "--json"]
    if aten_held_below_avx512():  # torch's bf16 attention cannot run there: one clear line
        assert "--precision fp32" in _error(capsys, argv)
        return
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["precision"] == "bf16" and result["val_loss"] < 10


def _one_error_line(capsys, argv) -> str:
    """The one error line of a run that exits 2; the data may have been prepared (its progress
    shown) before the model could be checked."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lmforge: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora-rank", "0"], "--lora-rank 0 is not a rank: give 1 or more"),
        (["--lora-rank", "4", "--lora-dropout", "-0.1"], r"--lora-dropout -0.1 must be in [0, 1)"),
        (
            ["--lora-rank", "4", "--lora-targets", "q_proj", "--optimizer", "adamw"],
            "--lora-targets q_proj matches no module of this GPTCausalLM; its linear layers: "
            "attn.out, attn.qkv, ffn.down, ffn.up",
        ),
        (["--lora-dropout", "0.1"], "set up LoRA: add --lora-rank 8"),
        (["--lora-rank", "4", "--optimizer", "muon"], "and --optimizer is muon: drop --optimizer"),
    ],
)
def test_bad_lora_options_are_one_line_and_write_nothing(
    tiny_text, tmp_path, capsys, flags, message
):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", *TINY, "--max-steps", "1"]
    assert message in _one_error_line(capsys, [*argv, *flags, "--out", str(out)])
    assert not out.exists()


def test_lora_on_a_char_rnn_is_refused(tiny_text, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_text), "--tokenizer", "char", "--preset"]
    argv += ["char-rnn-lstm-shakespeare", "--max-steps", "1", "--lora-rank", "4"]
    err = _one_error_line(capsys, [*argv, "--out", str(tmp_path / "run")])
    assert "no linear layers in its backbone for LoRA to wrap: drop --lora-rank" in err
    assert not (tmp_path / "run").exists()


def test_lora_on_a_muon_preset_trains_with_adamw(tiny_text, tmp_path):
    # gpt-baby trains with Muon; its adapters take AdamW without being told
    argv = ["train", "--data", str(tiny_text), "--max-steps", "2"]
    assert main([*argv, "--tokenizer", "char", *TINY, "--out", str(tmp_path / "base")]) == 0
    base = json.loads((tmp_path / "base" / "config.json").read_text())["train"]
    assert base["optimizer"] == "muon"
    lora = ["--init-from", str(tmp_path / "base"), "--lora-rank", "4", "--block-size", "16"]
    assert main([*argv, *lora, "--out", str(tmp_path / "lora")]) == 0
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["train"]["optimizer"] == "adamw" and config["lora"]["rank"] == 4
