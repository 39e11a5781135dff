"""Data-parallel training on CPU with gloo: two processes equal one with accumulation,
a dead rank does not hang the others, and a 2-process run resumes under 1 process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.training import distributed

TINY = [
    "--preset",
    "gpt-baby",
    "--optimizer",
    "adamw",  # the preset's Muon has no FSDP path; AdamW keeps the exact-equality checks simple
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
    "--log-every",
    "1",
    "--tokenizer",
    "char",
    "--json",
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _why(proc: subprocess.CompletedProcess) -> str:
    """The lmforge error lines of a failed run (torchrun's own report buries them)."""
    said = ("lmforge: error", "terminate called", "Error:")  # ours, and a rank's C++ abort
    lines = [line for line in proc.stderr.splitlines() if any(s in line for s in said)]
    return "\n".join(lines) or proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lmforge",
        "train",
        *args,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _lmforge(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", "train", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_two_processes_equal_one_with_accumulation(tiny_text, tmp_path):
    common = ["--data", str(tiny_text), *TINY, "--global-batch-size", "8", "--max-steps", "6"]
    two = _torchrun(2, [*common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, _why(two)
    one = _lmforge([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, _why(one)
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, diff
    tokens = [json.loads(r)["tokens"] for r in (tmp_path / "two" / "metrics.jsonl").open()]
    assert tokens[-1] == 6 * 8 * 16  # the global batch, counted once


def test_stop_under_two_processes_resume_under_one(tiny_text, tmp_path):
    common = [
        "--data",
        str(tiny_text),
        *TINY,
        "--global-batch-size",
        "8",
        "--schedule",
        "constant",
    ]
    run = ["--out", str(tmp_path / "run")]
    first = _torchrun(2, [*common, *run, "--max-steps", "4"])
    assert first.returncode == 0, _why(first)
    second = _lmforge([*common, *run, "--max-steps", "8", "--resume"])
    assert second.returncode == 0, _why(second)
    straight = _lmforge([*common, "--out", str(tmp_path / "straight"), "--max-steps", "8"])
    assert straight.returncode == 0, _why(straight)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").open()]
    rows = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["tokens"] == 8 * 8 * 16
    # the loss curve continues where an uninterrupted one-process run would be
    expected = [json.loads(r) for r in (tmp_path / "straight" / "metrics.jsonl").open()]
    expected = [r["train_loss"] for r in expected if "train_loss" in r]
    diffs = [abs(r["train_loss"] - e) for r, e in zip(rows, expected, strict=True)]
    assert max(diffs[4:]) <= 1e-5, diffs
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


def test_a_dead_rank_makes_the_other_exit_with_an_error(tiny_text, tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lmforge",
                    "train",
                    "--data",
                    str(tiny_text),
                    *TINY,
                    "--max-steps",
                    "100000",
                    "--dist-timeout",
                    "30",
                    "--out",
                    str(tmp_path / "run"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.5)
    assert metrics.exists(), procs[0].communicate(timeout=5)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    _, err = procs[0].communicate(timeout=90)
    assert procs[0].returncode == 2, err[-2000:]
    assert "lost contact" in err and "Traceback" not in err
    assert time.time() - t0 < 90


# the Llama-style family at the same size: grouped-query attention, one rotary table for all blocks
LLAMA = [*TINY, "--preset", "llama-shakespeare", "--num-layers", "2", "--num-kv-heads", "1"]


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_fsdp_equals_one_process_and_resumes_under_ddp(tiny_text, tmp_path, family):
    shape = TINY if family == "gpt" else LLAMA
    common = [
        "--data",
        str(tiny_text),
        *shape,
        "--global-batch-size",
        "8",
        "--schedule",
        "constant",
    ]
    fsdp = _torchrun(
        2, [*common, "--strategy", "fsdp", "--max-steps", "4", "--out", str(tmp_path / "fsdp")]
    )
    assert fsdp.returncode == 0, _why(fsdp)
    one = _lmforge([*common, "--max-steps", "4", "--out", str(tmp_path / "one")])
    assert one.returncode == 0, _why(one)
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "fsdp" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    more = _torchrun(2, [*common, "--max-steps", "6", "--resume", "--out", str(tmp_path / "fsdp")])
    assert more.returncode == 0, _why(more)
    assert json.loads(more.stdout.strip().splitlines()[-1])["steps"] == 6


def test_bad_distributed_options(tiny_text, tmp_path):
    base = ["--data", str(tiny_text), *TINY, "--max-steps", "1"]
    bad = _torchrun(2, [*base, "--global-batch-size", "6", "--out", str(tmp_path / "a")])
    assert bad.returncode != 0
    assert "lmforge: error: --global-batch-size 6 is not divisible" in bad.stderr
    # torchrun's agent reports the failed worker with its own traceback; ours print none
    assert "lmforge/training" not in bad.stderr
    nccl = _lmforge([*base, "--backend", "nccl", "--device", "cpu", "--out", str(tmp_path / "b")])
    assert nccl.returncode == 2 and "nccl needs CUDA" in _one_line_error(nccl.stderr)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _one_line_error(stderr: str) -> str:
    err = stderr.strip()
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_global_batch_in_one_process(tiny_text, tmp_path, capsys):
    args = ["--data", str(tiny_text), *TINY, "--max-steps", "1", "--out", str(tmp_path / "a")]
    assert main(["train", *args, "--global-batch-size", "6"]) == 2  # TINY: --batch-size 4
    err = _one_line_error(capsys.readouterr().err)
    assert "--global-batch-size 6 is not divisible by --batch-size 4 x 1 processes" in err
    assert not (tmp_path / "a").exists()


def _torch_2_5_fsdp() -> types.ModuleType:
    """torch.distributed.fsdp as torch 2.4 and 2.5 have it: FSDP1, but no fully_shard."""
    module = types.ModuleType("torch.distributed.fsdp")
    module.FullyShardedDataParallel = object
    return module


def test_fully_shard_falls_back_to_its_torch_2_5_location(monkeypatch):
    from torch.distributed._composable.fsdp import fully_shard

    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", _torch_2_5_fsdp())
    assert distributed.fully_shard_fn() is fully_shard


def test_fsdp_missing_from_torch_is_one_line(tiny_text, tmp_path, capsys, monkeypatch):
    # FSDP1 is there, but fully_shard (what --strategy fsdp uses) is in neither place
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", _torch_2_5_fsdp())
    monkeypatch.setitem(sys.modules, "torch.distributed._composable.fsdp", None)
    args = ["--data", str(tiny_text), *TINY, "--max-steps", "1", "--out", str(tmp_path / "a")]
    assert main(["train", *args, "--strategy", "fsdp"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "--strategy fsdp needs FSDP2" in err and "--strategy ddp" in err
    assert not (tmp_path / "a").exists()
