"""Precision `auto` against what the CPU offers, and the machine line `make test` opens with."""

import os
import subprocess
import sys

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir as _default_cache_dir

from lmforge import device
from lmforge.errors import ConfigError


def _has_bf16_units() -> bool:
    """bf16 matrix units that torch's kernels, as held by ATEN_CPU_CAPABILITY, can use."""
    units = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    held = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
    return bool(units) and not (held and torch.cpu._is_amx_tile_supported())


def test_auto_picks_bf16_exactly_where_the_cpu_has_bf16_units(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    want = "bf16" if _has_bf16_units() else "fp32"
    assert device.resolve_precision("auto", torch.device("cpu")) == want
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # explicit wins
    if not device.aten_held_below_avx512():
        assert device.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_explicit_bf16_where_torch_cannot_run_it_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(device, "aten_held_below_avx512", lambda: True)
    with pytest.raises(ConfigError, match="--precision fp32"):
        device.resolve_precision("bf16", torch.device("cpu"))
    assert device.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_onednn_held_below_bf16_makes_auto_fp32(monkeypatch):
    for isa in ("AVX2", "avx512_core", "AVX512_CORE_VNNI", "SSE41"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert device.resolve_precision("auto", torch.device("cpu")) == "fp32", isa
    for isa in ("AVX512_CORE_BF16", "avx512_core_amx", "ALL"):  # caps that keep bf16 units
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        want = "bf16" if _has_bf16_units() else "fp32"
        assert device.resolve_precision("auto", torch.device("cpu")) == want, isa


def test_machine_line_names_cpu_kernels_and_threads():
    summary = device.machine_summary()
    assert summary["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["threads"] == torch.get_num_threads()
    assert ("amx" in summary["cpu_features"]) == torch.cpu._is_amx_tile_supported()
    assert ("avx2" in summary["cpu_features"]) == torch.cpu._is_avx2_supported()
    line = device.machine_line()
    assert summary["cpu"] in line and f"CPU capability {summary['cpu_capability']}" in line
    assert f"{summary['threads']} threads" in line and "\n" not in line


@pytest.mark.parametrize(
    "model, wide",
    [
        (torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 64)), True),
        (torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.Linear(512, 128)), False),
        (torch.nn.LSTM(256, 1024), True),
        (torch.nn.Embedding(10, 4), None),  # no matmuls: the CPU alone decides
    ],
)
def test_auto_keeps_narrow_models_in_fp32(monkeypatch, model, wide):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(device, "cpu_has_bf16_matmul", lambda: True)
    want = "bf16" if wide in (True, None) else "fp32"
    assert device.resolve_precision("auto", torch.device("cpu"), model) == want
    monkeypatch.setattr(device, "cpu_has_bf16_matmul", lambda: False)
    assert device.resolve_precision("auto", torch.device("cpu"), model) == "fp32"


def _compile_cache(env: dict) -> str:
    """separate_compile_cache() as a fresh process with `env` sees it (ATen reads its
    capability once, at start)."""
    code = "from lmforge.device import separate_compile_cache; print(separate_compile_cache())"
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "ONEDNN_"))}
    keep.pop("TORCHINDUCTOR_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env={**keep, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_compiled_graphs_are_cached_apart_per_cpu_kernels(tmp_path):
    default = _compile_cache({})
    avx2 = _compile_cache({"ATEN_CPU_CAPABILITY": "avx2"})
    plain = _compile_cache({"ATEN_CPU_CAPABILITY": "default"})
    held = _compile_cache({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert avx2 != plain and held != default
    runs_avx2_anyway = default.startswith(_default_cache_dir() + "-avx2-")  # no AVX-512 here
    assert (default == avx2) == runs_avx2_anyway
    assert "torchinductor" in default
    mine = str(tmp_path / "inductor")
    assert _compile_cache({"TORCHINDUCTOR_CACHE_DIR": mine}) == mine  # the user's choice wins


def test_a_training_run_compiles_into_its_own_cache(tmp_path):
    """As `lmforge train --compile` does: the optimizer is made first (importing torch._dynamo,
    which writes torch's default folder into TORCHINDUCTOR_CACHE_DIR), then the loss compiled.
    The compiled graph must land in the per-CPU-kernels folder, none in the shared default."""
    code = (
        "import torch\n"
        "from torch._inductor.runtime.cache_dir_utils import default_cache_dir\n"
        "from lmforge.training import loop\n"
        "torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])\n"
        "import os; assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == default_cache_dir()\n"
        "loss = loop._compiled(lambda x: (x * 2.0).sin().sum())\n"
        "loss(torch.randn(8, requires_grad=True)).backward()\n"
        "print(default_cache_dir()); print(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
    )
    keep = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**keep, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    shared, own = done.stdout.split()
    assert shared.startswith(str(tmp_path)) and own.startswith(shared + "-")
    assert os.path.isdir(os.path.join(own, "fxgraph"))  # the graph was cached, here
    assert not os.path.exists(os.path.join(shared, "fxgraph"))
