"""Weights and linear layers laid out for decoding on a CPU.

`decode_layout_(model)` readies a model's float32 nn.Linear and LM head modules for decode steps
of a few rows, in place, keeping their parameters, values and state_dict:

- where lmforge's small-rows kernel builds here (layers/cpu_kernels.py), each module becomes its
  small-rows subclass, whose forward sends 1 to 8 rows without grad to the kernel (every weight
  read once for all the rows at close to memory speed) and anything else to F.linear;
- elsewhere each weight is stored column-major (the memory of its transpose): F.linear computes
  x @ W.T, and MKL's sgemm reads a contiguous W.T faster when x has a few rows. Measured on an
  AVX-512 Xeon, GPT-2 small: a step of 8 rows took 2.7x one row's time row-major, 2.0x so.

`train_layout_(model)` undoes both, so training (and a resumed run, which loads row-major
weights) computes as it always did.

`block_step(block, x, cache, rows)` runs a pre-norm TransformerBlock for rows that each read one
new token (a decode step) in one call of the kernels' fused block: the Python block's ~25 small
ops a layer cost GPT-2 small ~2 ms of a ~22 ms one-row step (A/B in one process, AMX Xeon: 21.9
-> 20.0 ms; 8 rows 29.6 -> 27.2; int8 one row 8.7 -> 6.3). `stack_step(blocks, x, caches, rows)`
runs every block of a model so in one call, from a plan of their parameters gathered once and
kept while the blocks stay the same (the Python between blocks cost GPT-2 small's int8 step
~0.45 ms of ~4.9).
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.layers.attention import SlotKVCache, SlotRows
from lmforge.layers.cpu_kernels import MAX_ROWS, small_linear
from lmforge.layers.cpu_kernels import decode_stack as stack_op
from lmforge.layers.heads import LMHead
from lmforge.layers.quant import PACK, Int8Linear
from lmforge.layers.transformer import TransformerBlock

_op = None  # the kernel decode_layout_ found (None until then)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear, through the small-rows kernel for 1 to MAX_ROWS float32 rows on the CPU with no
    grad to record and a row-major weight."""
    width = x.shape[-1]
    rows = x.numel() // width if width else 0
    if (
        _op is not None
        and 1 <= rows <= MAX_ROWS
        and not torch.is_grad_enabled()
        and x.dtype == weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.is_contiguous()
    ):
        return _op(x.reshape(rows, width), weight, None, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class SmallRowsLinear(nn.Linear):
    """nn.Linear whose decode steps (a few rows, no grad) run in lmforge's small-rows kernel."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class SmallRowsLMHead(LMHead):
    """LMHead whose decode steps (a few rows, no grad) run in lmforge's small-rows kernel."""

    def forward(self, hidden: Tensor) -> Tensor:
        return linear(hidden, self.weight, self.bias)


_SMALL = {nn.Linear: SmallRowsLinear, LMHead: SmallRowsLMHead}
_PLAIN = {small: plain for plain, small in _SMALL.items()}


def _decodable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module) in _SMALL
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.dim() == 2
    )


def decode_layout_(model: nn.Module) -> int:
    """Ready `model`'s float32 CPU nn.Linear and LMHead modules for decoding, in place (see the
    module docstring); returns how many modules were changed."""
    global _op
    modules = [m for m in model.modules() if _decodable(m)]
    if modules and _op is None:
        _op = small_linear()
    changed = 0
    with torch.no_grad():
        for module in modules:
            weight = module.weight
            if _op is not None:
                module.__class__ = _SMALL[type(module)]
                weight.data = weight.contiguous()
                changed += 1
            elif weight.is_contiguous() and min(weight.shape) >= 2:  # else already so, or both
                weight.data = weight.t().contiguous().t()
                changed += 1
    return changed


def train_layout_(model: nn.Module) -> int:
    """Undo decode_layout_: plain nn.Linear and LMHead modules with row-major (contiguous)
    weights, in place; returns how many modules were changed. Training calls it after sampling
    from the model it trains, so its steps (and a resumed run's) compute alike."""
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            small = type(module) in _PLAIN
            if small:
                module.__class__ = _PLAIN[type(module)]
            if isinstance(module, (nn.Linear, LMHead)) and not module.weight.is_contiguous():
                module.weight.data = module.weight.contiguous()
                small = True
            changed += small
    return changed


def linear_params(module: nn.Module, int8_path: str | None) -> tuple | None:
    """(weight, scale, bias) of a linear layer the kernels run, else None; `int8_path`: what an
    Int8Linear of the int8pack kernel runs for these rows (Int8Linear.path). (Parameters and
    buffers are read from their dicts: nn.Module's attribute lookup for them cost the decode
    step ~0.4 ms of GPT-2 small's 12 blocks.)"""
    kind = type(module)
    if kind is SmallRowsLinear:
        params = module._parameters
        weight = params["weight"]
        return (weight, None, params["bias"]) if weight.is_contiguous() else None
    if kind is Int8Linear and module.kernel == PACK and int8_path in ("vnni", "small_linear"):
        buffers = module._buffers
        return buffers["weight"], buffers["scale"], module.bias
    return None


def int8_path(module: nn.Module, n: int) -> str | None:
    """What `module` runs n float32 rows with when it is an int8pack Int8Linear, else None."""
    return module.path(n) if type(module) is Int8Linear and module.kernel == PACK else None


def _activation(module: nn.Module) -> int | None:
    if type(module) is nn.ReLU:
        return 0
    if type(module) is nn.GELU:
        return 2 if module.approximate == "tanh" else 1
    return None


def hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _block_params(block: nn.Module, n: int) -> tuple | None:
    """For a pre-norm GPT TransformerBlock and steps of n rows: (its 20 parameters in the fused
    kernel's order, its switches (heads, kv_heads, eps, act, rms, window, qk_eps)), or None where
    the kernel cannot run it (see block_step). Llama's blocks have their own (models/llama.py)."""
    if (
        type(block) is not TransformerBlock
        or not block.norm_first
        or block.training
        or not 1 <= n <= MAX_ROWS
    ):
        return None
    parts = block._modules
    attn, ffn, norm1, norm2 = parts["attn"], parts["ffn"], parts["attn_norm"], parts["ffn_norm"]
    if (
        parts.get("attn_canon") is not None  # Canon layers: the Python path
        or not attn.is_causal
        or attn.capture_probs
        or attn.sliding_window is not None
        or attn.num_kv_heads != attn.num_heads
        or "q_norm" in attn._modules
        or type(norm1) is not nn.LayerNorm
        or type(norm2) is not nn.LayerNorm
        or norm1.eps != norm2.eps
        or hooked(block, attn)
    ):
        return None
    inner, mlp = attn._modules, ffn._modules
    path = int8_path(inner["qkv"], n)
    linears = [linear_params(m, path) for m in (inner["qkv"], inner["out"], mlp["up"], mlp["down"])]
    act = _activation(mlp["act"])
    if act is None or None in linears:
        return None
    rotary = inner.get("rotary")
    tables = (None, None) if rotary is None else (rotary._buffers["cos"], rotary._buffers["sin"])
    ln1, ln2 = norm1._parameters, norm2._parameters
    (qkv_p, out_p, up_p, down_p), no_qk_norm = linears, (None, None)
    params = (ln1["weight"], ln1["bias"], *qkv_p, *no_qk_norm, *out_p, ln2["weight"], ln2["bias"])
    switches = (attn.num_heads, attn.num_heads, norm1.eps, act, False, 0, 0.0)
    return (*params, *up_p, *down_p, *tables), switches


def _fingerprint(block: nn.Module) -> tuple:
    """What a stack plan of `block` rests on, cheap to read at every step: its class, mode and
    hooks, and which modules (and their classes, flags, parameters and buffers) it holds two
    levels down: a module swapped by quantize_/train_layout_, a parameter replaced or a hook
    added changes it."""
    key = [block.__class__, block.training, getattr(block, "norm_first", None)]
    key += (len(block._forward_hooks), len(block._forward_pre_hooks))
    for child in block._modules.values():
        key += (id(child), child.__class__, getattr(child, "capture_probs", None))
        key += (len(child._forward_hooks), len(child._forward_pre_hooks))
        key += map(id, child._parameters.values())
        for module in child._modules.values():
            key += (id(module), module.__class__, getattr(module, "approximate", None))
            key += map(id, module._parameters.values())
            key += map(id, module._buffers.values())
    return tuple(key)


_PLAN = "_lmforge_decode_plan"  # a ModuleList's cached plans (in its __dict__, not a submodule)
Params = Callable[[nn.Module, int], "tuple | None"]


def _run(
    op, blocks, params_of: Params, x: Tensor, caches: list, rows: SlotRows, plans: dict | None
):
    n = x.shape[0]
    if (
        op is None
        or torch.is_grad_enabled()
        or x.dtype != torch.float32
        or caches[0].k.dtype != torch.float32
        or not 1 <= n <= MAX_ROWS
    ):
        return None
    if plans is None:  # one block, no plan kept
        found = [params_of(block, n) for block in blocks]
        plan = (None, *_gather(found), None)
    else:
        key = tuple(_fingerprint(block) for block in blocks)
        plan = plans.get(n)
        if plan is None or plan[0] != key:
            found = [params_of(block, n) for block in blocks]
            # the plan holds every module the key names, so no id in the key can be reused
            held = [m for block in blocks for m in block.modules()]
            plan = plans[n] = (key, *_gather(found), held)
    _, params, switches, _ = plan
    if params is None:
        return None
    k = [cache.k for cache in caches]
    v = [cache.v for cache in caches]
    return op(x.contiguous(), params, k, v, rows.rows, rows.positions, *switches)


def _gather(found: list) -> tuple:
    """(every block's parameters in one list, the switches) where every block runs in the
    kernel with the same switches, else (None, None)."""
    if None in found or len({switches for _, switches in found}) != 1:
        return None, None
    return [p for params, _ in found for p in params], found[0][1]


def block_step(block: nn.Module, x: Tensor, cache: SlotKVCache, rows: SlotRows) -> Tensor | None:
    """`block`'s output for x (n, C), row i the one new token of slot rows.rows[i] at position
    rows.positions[i] (writing its key and value into `cache`), in one call of the fused decode
    kernel; None where that block cannot run so (then the caller runs it as usual): anything but
    a pre-norm causal TransformerBlock in eval mode with LayerNorms and no Canon layers, one
    key/value head per query head, its linear layers in the small-rows kernel (decode_layout_,
    or int8), a float32 cache, no hooks and no captured attention."""
    return _run(stack_op(), [block], _block_params, x, [cache], rows, None)


def stack_step(
    blocks: nn.ModuleList,
    x: Tensor,
    caches: list[SlotKVCache],
    rows: SlotRows,
    params_of: Params = _block_params,
) -> Tensor | None:
    """Every block of `blocks` for a decode step (as block_step, block i with caches[i]) in one
    call of the kernels' decode_stack: the blocks' parameters (`params_of(block, n)`: GPT's
    TransformerBlock by default) are gathered once into a plan kept on the ModuleList and reused
    while every block's _fingerprint stays the same (the Python of block_step cost GPT-2 small's
    int8 step ~0.45 ms of ~4.9). None where some block cannot run so (then the caller runs them
    one by one)."""
    return _run(
        stack_op(), blocks, params_of, x, caches, rows, blocks.__dict__.setdefault(_PLAN, {})
    )
