"""Weight-only int8: `Int8Linear` and `quantize_(model, "int8")`, which swaps every nn.Linear and
LM head of a model for one, in place.

Each output channel (row of the weight) gets one float32 scale, amax(|row|) / 127, and int8 values
in [-127, 127]. On the CPU up to 8 rows (decoding a few streams) run in lmforge's VNNI op where
the CPU has AVX-512 VNNI (activations rounded to int8 per row), else up to 4 in its small-rows
kernel (layers/cpu_kernels.py) where it builds, else in `torch._weight_int8pack_mm`; more rows (a
batch of streams, a prompt) in `torch._int_mm` on activations quantized to int8 per row, each
where the running torch has it and it passes a probe; elsewhere a plain fallback dequantizes the
weight on the fly. Before editing: the packed kernel's bfloat16 path gives wrong
sums or segfaults for widths not a multiple of 16 (torch 2.13): `pack_dtype` keeps them off it.
"""

import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.cpu_kernels import MAX_ROWS, int8_linear, small_linear
from lmforge.layers.heads import LMHead
from lmforge.layers.lora import merge_lora_

log = logging.getLogger(__name__)

KINDS = ("int8",)  # what `--quantize` accepts
PACK = "int8pack"  # torch's int8 kernels: _weight_int8pack_mm and _int_mm
DEQUANT = "dequant"  # fallback: weight.to(x.dtype) * scale, then a plain matmul

_pack_dtypes: tuple | None = None  # probed once, fastest first
_int_mm_works: bool | None = None  # probed once
# The packed kernel reads each weight once per row: it beats a float32 matmul for a few rows
# (decoding: 1.7-2x at 1-8 rows, GPT-2 small's 768 x 3072) and loses from 16 rows on (2x slower
# at 64), where dequantizing once and one float32 matmul win (prefill, eval).
PACK_MAX_ROWS = 8
# lmforge's small-rows kernel (layers/cpu_kernels.py: float32 activations, each int8 weight
# widened once for all rows) beats both up to 4 rows: GPT-2 small's weights on an AMX Xeon, 2
# threads: 1 row 3.6 ms (packed kernel 4.5), 2 rows 4.2 (5.9, _int_mm 7.2), 4 rows 6.7 (8.6, 7.9),
# 8 rows 11.8 (_int_mm 8.2).
SMALL_MAX_ROWS = 4
# torch._int_mm (int8 x int8 -> int32, VNNI/AMX) reads the weight once for all rows: measured on
# an AMX Xeon, GPT-2 small's layers, 2 threads: 0.8x the packed kernel at 2 rows, 1.8x at 8, 4x
# at 32, and 20x the fallback. Its activations are rounded to int8 per row (per token).
INT_MM_MIN_ROWS = 4
# Where the CPU has AVX-512 VNNI, lmforge's int8 op (layers/cpu_kernels.py: activations rounded to
# int8 per row, as for _int_mm, and summed in int32, 64 products an instruction) runs 1 to 8 rows.


def pack_dtypes() -> tuple:
    """The activation dtypes `torch._weight_int8pack_mm` computes right here (of bfloat16 and
    float32), fastest first; () where the kernel is absent. The probe times them: torch 2.13's x86
    kernel is vectorized for bfloat16 but scalar for float32 (about 15x slower, and slower than
    a float32 matmul)."""
    global _pack_dtypes
    if _pack_dtypes is None:
        working = [dt for dt in (torch.bfloat16, torch.float32) if _pack_works(dt)]
        _pack_dtypes = tuple(sorted(working, key=_pack_seconds))
    return _pack_dtypes


def pack_dtype(in_features: int) -> torch.dtype | None:
    """The activation dtype the kernel runs in for a layer this wide; None: use the fallback.
    Its bfloat16 path needs in_features % 16 == 0: other widths give wrong sums or crash
    (torch 2.13), so they never reach it."""
    ok = (dt for dt in pack_dtypes() if dt != torch.bfloat16 or in_features % 16 == 0)
    return next(ok, None)


def _pack_works(dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=g).to(dtype)  # a width every path handles (see pack_dtype)
    q = torch.randint(-127, 128, (24, 64), generator=g, dtype=torch.int8)
    scale = torch.rand(24, generator=g) / 127
    try:
        out = torch._weight_int8pack_mm(x, q, scale.to(dtype)).float()
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    ref = x.float() @ (q.float() * scale[:, None]).T
    # bfloat16 rounds the inputs and the sum: within 5% of the largest output, not bit for bit
    return out.shape == ref.shape and bool((out - ref).abs().max() <= 0.05 * ref.abs().max())


def int_mm_works() -> bool:
    """Whether `torch._int_mm` multiplies int8 matrices exactly here (probed once). On AVX2
    without VNNI (torch 2.13, oneDNN) pairs of products saturate at int16: sums come out wrong
    for values past about +-90, so there it is off."""
    global _int_mm_works
    if _int_mm_works is None:
        g = torch.Generator().manual_seed(0)
        a = torch.randint(-127, 128, (INT_MM_MIN_ROWS, 40), generator=g, dtype=torch.int8)
        b = torch.randint(-127, 128, (24, 40), generator=g, dtype=torch.int8)
        try:
            out = torch._int_mm(a, b.t())
            _int_mm_works = bool(torch.equal(out, a.int() @ b.int().t()))
        except (AttributeError, RuntimeError, NotImplementedError, TypeError):
            _int_mm_works = False
    return _int_mm_works


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 (M, K), float32 scale (M, 1)) with x ~= int8 * scale, one scale per row (token)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(x / scale).to(torch.int8), scale


def _pack_seconds(dtype: torch.dtype) -> float:
    """Best of a few (1, 1024) x (1024, 1024) products, a decoding step's shape, on one thread
    (a busy second core would time the thread pool instead)."""
    x, q = torch.ones(1, 1024, dtype=dtype), torch.ones(1024, 1024, dtype=torch.int8)
    scale = torch.ones(1024, dtype=dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch._weight_int8pack_mm(x, q, scale)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            torch._weight_int8pack_mm(x, q, scale)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return min(times)


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 (N, K), float32 scale (N,)) with weight ~= int8 * scale[:, None], row by row."""
    w = weight.detach().float().contiguous()  # the kernels want (N, K) row-major
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (weight * scale[:, None]).T + bias, with int8 `weight` (N, K) and float32 `scale`
    (N,) stored as buffers (state_dict keys `weight`, `scale`, `bias`).

    Args:
        kernel: PACK (on the CPU: torch._int_mm from INT_MM_MIN_ROWS rows on, else
            torch._weight_int8pack_mm for up to PACK_MAX_ROWS rows, its activations in
            `pack_dtype()`; else the fallback) or DEQUANT (the fallback always).
    """

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None, kernel: str):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.kernel = kernel
        self._ones: Tensor | None = None  # the kernel's scales when it runs unscaled

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None, kernel: str) -> "Int8Linear":
        q, scale = quantize_weight(weight)
        return cls(q.to(weight.device), scale.to(weight.device), bias, kernel)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        path = self.path(x.numel() // max(1, x.shape[-1]), x.dtype) if x.is_cpu else None
        if path in ("vnni", "small_linear"):
            flat = x.reshape(-1, self.in_features)
            op = int8_linear() if path == "vnni" else small_linear()
            out = op(flat, self.weight, self.scale, self.bias)
            return out.view(*x.shape[:-1], self.out_features)
        if path is None:
            out = F.linear(x, self.weight.to(x.dtype))
        else:  # the kernels take (M, K) only
            flat = x.reshape(-1, self.in_features)
            if path == "int_mm":
                xq, row_scale = quantize_rows(flat)
                out = torch._int_mm(xq, self.weight.t()) * row_scale  # int32 sums, exact
            else:
                out = self._packed(flat.to(path), path)
            out = out.view(*x.shape[:-1], self.out_features)
        # the scales (and bias) in float32: a bfloat16 kernel rounds activations and sums only
        out = out * self.scale if self.bias is None else torch.addcmul(self.bias, out, self.scale)
        return out.to(x.dtype)

    def path(self, rows: int, dtype: torch.dtype = torch.float32) -> str | torch.dtype | None:
        """What runs `rows` CPU rows of `dtype`: "vnni" or "small_linear" (lmforge's kernels,
        float32 only), "int_mm", the packed kernel's activation dtype, or None (the fallback)."""
        if self.kernel != PACK:
            return None
        if rows <= MAX_ROWS and dtype == torch.float32 and int8_linear() is not None:
            return "vnni"
        if rows <= SMALL_MAX_ROWS and dtype == torch.float32 and small_linear() is not None:
            return "small_linear"
        if rows >= INT_MM_MIN_ROWS and int_mm_works():
            return "int_mm"
        return pack_dtype(self.in_features) if rows <= PACK_MAX_ROWS else None

    def _packed(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """x (M, K) @ weight.T in the kernel, unscaled (scales of one)."""
        if self._ones is None or self._ones.dtype != dtype:
            self._ones = torch.ones(self.out_features, dtype=dtype)
        return torch._weight_int8pack_mm(x, self.weight, self._ones)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def check_kind(kind: str) -> None:
    """ConfigError naming the supported kinds unless `kind` is one."""
    if kind not in KINDS:
        raise ConfigError(
            f"unsupported quantization {kind!r}: lmforge supports {', '.join(KINDS)} "
            f"(--quantize {KINDS[0]})"
        )


def pick_kernel(device: torch.device | str = "cpu") -> str:
    """PACK where torch's int8 kernels work on `device` (the CPU), else DEQUANT."""
    usable = pack_dtypes() or int_mm_works()
    return PACK if torch.device(device).type == "cpu" and usable else DEQUANT


def quantize_(model: nn.Module, kind: str = "int8", kernel: str | None = None) -> str:
    """Swap every nn.Linear and LMHead of a causal LM for an Int8Linear, in place; returns the
    kernel that runs (PACK or DEQUANT), also kept as `model.int8_kernel`. A tied head gets its own
    int8 copy; embeddings stay as they are, so token lookups are exact. Again: a no-op.

    Example:
        model = lmforge.load("runs/shakespeare")
        quantize_(model, "int8")  # "int8pack" on a CPU whose torch has the kernel
    """
    check_kind(kind)
    merge_lora_(model)  # a LoRA model's int8 weights are its merged ones
    if not (hasattr(model, "step") and hasattr(model, "init_state")):
        # BERT's first-token path slices its attention weights itself: int8 would break it
        raise ConfigError(
            f"int8 weights are for causal language models (GPT, char-RNN runs), and this is a "
            f"{type(model).__name__}: use it with its own weights"
        )
    if kernel is None:
        first = next(iter(model.parameters()), None)
        kernel = pick_kernel(first.device if first is not None else "cpu")
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Linear, LMHead)):
                setattr(parent, name, Int8Linear.from_float(child.weight, child.bias, kernel))
                count += 1
            elif isinstance(child, Int8Linear):
                child.kernel = kernel
    if count:
        small = (
            f"lmforge's VNNI kernel to {MAX_ROWS} rows"
            if int8_linear()
            else f"lmforge's small-rows kernel to {SMALL_MAX_ROWS} rows"
            if small_linear()
            else ""
        )
        packed = f"torch._weight_int8pack_mm ({str(pack_dtypes()[0])[6:]})" if pack_dtypes() else ""
        batched = f"torch._int_mm from {INT_MM_MIN_ROWS} rows" if int_mm_works() else ""
        what = ", ".join(filter(None, (small, packed, batched)))
        what = what if kernel == PACK else "dequantize-on-the-fly matmul"
        log.info("int8 weights: %d linear layers, kernel %s (%s)", count, kernel, what)
    model.quantized = kind
    model.int8_kernel = kernel
    return kernel
