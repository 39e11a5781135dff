"""Picks the device, the compute precision and the autocast context, once, for everyone.

`auto` precision means bf16 only where bf16 matrix units exist (CUDA with bf16, or a CPU with
AMX/AVX512-BF16); on other CPUs bf16 matmuls are emulated and ~100x slower than fp32.
"""

import contextlib
import logging

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


def cpu_has_bf16_matmul() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16)."""
    cpu = torch.cpu
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn `auto|fp32|bf16` into the precision actually used on `device`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


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
