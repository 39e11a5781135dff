"""lmforge's decode kernels for the CPU, built from cpu_kernels.cpp once: a linear layer for a few
rows (float32 or int8 weights), an int8 one on VNNI, and a whole transformer block for rows of one
new token each.

Decoding reads every weight once a step; a step of 8 streams multiplies 8 rows by each weight.
torch's float32 matmul (MKL's sgemm) reads weights at memory speed for one row but is built for
big matrices: for 2 to 8 rows it computes and reads in turn and gets about half the speed. The
kernel reads each weight row once for all the rows, prefetching a few rows ahead. Measured on an
AMX Xeon, 2 threads, 377 MB of 768 x 3072 weights (so, from memory): 1 row 33 GB/s (MKL 30-35),
4 rows 30 (MKL 15, column-major 16), 8 rows 25 (MKL 11, column-major 14-15).

`small_linear()` returns the op, `(x (M, K), w (N, K), scale (N,) or None, b (N,) or None) ->
(M, N)` = x @ (w * scale[:, None]).T + b for 1 to MAX_ROWS float32 rows, w float32 (no scale)
or int8 (a float32 scale per row, layers/quant.py's Int8Linear), or None where it cannot be had;
callers then keep torch's kernels. `int8_linear()` (where the CPU has AVX-512 VNNI) rounds the
rows to int8 per row first and sums in int32, 64 products an instruction: GPT-2 small in int8,
one stream, then decodes at CTranslate2's int8 speed on an AMX Xeon. `decode_stack()` runs the
pre-norm blocks of a GPT or Llama-style model for a decode step in one call (layers/layout.py's
stack_step and block_step). They are built the
first time a process asks (about 10 s) with the C++ compiler ($CXX, else c++), torch's headers
and the flags of the instruction set torch itself runs (torch.backends.cpu.get_cpu_capability():
AVX512, AVX2 or neither, so ATEN_CPU_CAPABILITY=avx2 gets AVX2 code), into the kernel cache
($LMFORGE_KERNEL_DIR, else ~/.cache/lmforge/kernels) under a name hashing the source, the flags and
torch's version (a new build removes the older ones); the file is written atomically, so
processes building at once all finish.
LMFORGE_KERNELS=0 turns them off.
"""

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
MAX_ROWS = 8  # the kernel's reach; more rows: MKL reads the weight once and computes fast enough
FLAGS = {  # by torch's CPU capability
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_ops: dict[str, object] = {}  # capability -> the ops of its build (None: cannot be built here)


@functools.cache  # fixed when torch loads; asked at every int8 layer's forward
def capability() -> str:
    """The instruction set torch's own kernels use here: AVX512, AVX2 or DEFAULT."""
    return torch.backends.cpu.get_cpu_capability()


def kernel_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmforge" / "kernels"
    return Path(os.environ.get("LMFORGE_KERNEL_DIR", default))


def small_linear(isa: str | None = None) -> Callable | None:
    """The small-rows linear op for instruction set `isa` (default: torch's own), built and
    loaded on the first call of a process; None where it is turned off or cannot be built (the
    reason is logged once)."""
    ops = _library(isa)
    return None if ops is None else ops.small_linear


def decode_stack(isa: str | None = None) -> Callable | None:
    """The fused decode op for a stack of blocks (see cpu_kernels.cpp and layers/layout.py's
    `stack_step`), or None where the kernels are off or cannot be built."""
    ops = _library(isa)
    return None if ops is None else ops.decode_stack


@functools.cache
def _vnni(ops) -> bool:
    return bool(ops.has_vnni())


def int8_linear(isa: str | None = None) -> Callable | None:
    """The int8 op for 1 to MAX_ROWS rows, `(x (M, K) float32, w (N, K) int8, scale (N,), b (N,) or
    None) -> (M, N)`, whose activations are rounded to int8 per row and multiplied in int32 by
    AVX-512 VNNI; None where the CPU has no VNNI or the kernels are off or cannot be built."""
    ops = _library(isa)
    return ops.int8_linear if ops is not None and _vnni(ops) else None


def _library(isa: str | None):
    if os.environ.get("LMFORGE_KERNELS", "1") == "0":
        return None
    isa = isa or capability()
    if isa not in _ops:
        try:
            _ops[isa] = _load(isa)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            log.info("decoding with torch's matmul: lmforge's kernels did not build (%s)", e)
            _ops[isa] = None
    return _ops[isa]


def _load(isa: str):
    namespace = "lmforge_" + "".join(c for c in isa.lower() if c.isalnum())
    flags = FLAGS.get(isa, [])
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        source + " ".join(flags).encode() + torch.__version__.encode() + namespace.encode()
    ).hexdigest()[:16]
    path = kernel_dir() / f"cpu_kernels-{namespace}-{key}.so"
    if not path.exists():
        _build(path, flags, namespace)
        for pattern in (f"cpu_kernels-{namespace}-*.so", f"small_linear-{namespace}-*.so"):
            for old in path.parent.glob(pattern):  # other versions' builds
                if old != path:
                    old.unlink(missing_ok=True)  # a process that loaded it keeps its copy
    torch.ops.load_library(str(path))
    return getattr(torch.ops, namespace)


def _build(path: Path, flags: list[str], namespace: str) -> None:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise OSError("no C++ compiler found: install g++ or set CXX")
    root = Path(torch.__file__).parent
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("building lmforge's decode kernels once (about 10 s) into %s", path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    abi = int(torch.compiled_with_cxx11_abi())
    command = [
        cxx, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w", *flags,
        f"-DLMFORGE_NS={namespace}", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", str(SOURCE), "-o", tmp,
        f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{Path(cxx).name} exited {done.returncode}: {last}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
