"""Picks the device, the compute precision and the autocast context, once, for everyone.

`auto` precision means bf16 only where bf16 matrix units exist (CUDA with bf16, or a CPU with
AMX/AVX512-BF16); on other CPUs bf16 matmuls are emulated and ~100x slower than fp32.
"""

import contextlib
import logging
import os
import platform

import torch

from lmforge.errors import ConfigError
from lmforge.system import usable_cpus

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; `cpu`, `cuda`, `cuda:1` are taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r}: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA GPU is visible: use --device cpu"
        )
    return device


# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) with bf16 dot products; below them bf16 is emulated.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10_1_512", "DEFAULT", "ALL")


def onednn_isa_cap() -> str | None:
    """The ISA that `ONEDNN_MAX_CPU_ISA` limits oneDNN to, upper-cased, or None when unset."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap else None


def cpu_has_bf16_matmul() -> bool:
    """True when bf16 matrices are multiplied in hardware here (AMX tiles or AVX512-BF16).

    Honours `ONEDNN_MAX_CPU_ISA`: with oneDNN held to e.g. AVX2, bf16 matmuls are emulated even
    on a CPU that has the units, so `auto` must not pick bf16. Likewise `ATEN_CPU_CAPABILITY`
    below AVX-512 (see aten_held_below_avx512).
    """
    cap = onednn_isa_cap()
    if cap is not None and not cap.startswith(_ONEDNN_BF16_ISAS):
        return False
    if aten_held_below_avx512():
        return False
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def aten_held_below_avx512() -> bool:
    """True when torch's own (ATen) kernels run below AVX-512 on an x86 CPU with AMX, e.g. with
    `ATEN_CPU_CAPABILITY=avx2`: torch 2.13's bf16 attention then packs its inputs for AMX but
    refuses to ("pack_vnni2 is only supported when avx512 is supported"), so bf16 is unusable."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability in ("DEFAULT", "AVX2") and bool(torch.cpu._is_amx_tile_supported())


def cpu_features() -> list[str]:
    """The vector / matrix features of this CPU that decide which kernels torch runs."""
    probes = [
        ("avx2", "_is_avx2_supported"),
        ("avx512", "_is_avx512_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
        ("amx", "_is_amx_tile_supported"),
    ]
    return [name for name, probe in probes if getattr(torch.cpu, probe, lambda: False)()]


def separate_compile_cache() -> str:
    """Points torch.compile's on-disk cache at a folder of its own for the kernels torch runs
    here (CPU capability, oneDNN cap, CPU features) unless TORCHINDUCTOR_CACHE_DIR names another
    folder than torch's default, and returns it. Call before the first compile.

    torch 2.13's compiled-graph cache does not key on `ATEN_CPU_CAPABILITY`: a graph compiled
    with `ATEN_CPU_CAPABILITY=avx2` was loaded by a later default process on an AMX Xeon and
    corrupted its heap ("malloc(): unaligned tcache chunk detected"; a bf16 rotary attention at
    context 40), and a cache left by another CPU in a shared /tmp could hold instructions this
    one lacks.

    torch's default counts as unset: importing torch._dynamo (which creating an optimizer does)
    writes it into the environment, so a training run found it there before its first compile
    and, until this was seen, compiled into the shared folder after all.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    shared = default_cache_dir()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", shared) == shared:
        parts = [torch.backends.cpu.get_cpu_capability(), onednn_isa_cap(), *cpu_features()]
        tag = "-".join(p.lower() for p in parts if p)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{shared}-{tag}"
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> dict:
    """What a failure or a benchmark figure must be attributed to: CPU, kernels, threads."""
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": onednn_isa_cap(),
        "threads": torch.get_num_threads(),
        "auto_precision": "bf16" if cpu_has_bf16_matmul() else "fp32",
        "torch": torch.__version__,
    }


def machine_line() -> str:
    """machine_summary() as one line, e.g. for the first line of the test output."""
    m = machine_summary()
    isa = f", oneDNN <= {m['onednn_max_isa']}" if m["onednn_max_isa"] else ""
    return (
        f"{m['cpu']} [{' '.join(m['cpu_features']) or 'no AVX2'}] | torch {m['torch']}, "
        f"CPU capability {m['cpu_capability']}{isa} | {m['threads']} threads | "
        f"--precision auto -> {m['auto_precision']}"
    )


# Under bf16 autocast every matmul casts its inputs; a narrow model spends more on the casts than
# the bf16 units save. Measured on an AMX Xeon (2 cores, `lmforge train --preset gpt-baby`):
# width 128 trained 1.3x faster in fp32 (15k vs 11.5k tokens/s), width 256 1.2x faster in bf16,
# GPT-2 small (768) ~9x faster in bf16; a 1024-unit LSTM 1.8x faster in bf16.
BF16_MIN_WIDTH = 256


def model_width(model: torch.nn.Module) -> int | None:
    """The narrowest matmul input of a model: its Linear layers' in_features and its RNNs'
    hidden sizes (for a transformer, its embedding width). None when it has neither."""
    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    widths += [m.hidden_size for m in model.modules() if isinstance(m, torch.nn.RNNBase)]
    return min(widths) if widths else None


def resolve_precision(
    precision: str, device: torch.device, model: torch.nn.Module | None = None
) -> str:
    """Turn `auto|fp32|bf16` into the precision actually used on `device`.

    On a CPU, `auto` is bf16 where bf16 matrix units exist and, given the model, it is at least
    BF16_MIN_WIDTH wide (narrower models run faster in fp32 there)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cpu" and aten_held_below_avx512():
        raise ConfigError(
            "--precision bf16 fails here: ATEN_CPU_CAPABILITY holds torch's kernels below "
            "AVX-512 on this AMX CPU, where its bf16 attention cannot run; use --precision fp32 "
            "or unset ATEN_CPU_CAPABILITY"
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if not cpu_has_bf16_matmul():
        return "fp32"
    width = model_width(model) if model is not None else None
    return "fp32" if width is not None and width < BF16_MIN_WIDTH else "bf16"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(num_threads: int | None = None) -> int:
    """Use `num_threads` intra-op threads (default: the cores this process may run on)."""
    n = num_threads or usable_cpus()
    torch.set_num_threads(n)
    return n


if __name__ == "__main__":  # `python -m lmforge.device`: the machine line `make test` opens with
    set_threads()
    print(machine_line())
