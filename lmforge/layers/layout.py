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
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.layers.cpu_kernels import MAX_ROWS, small_linear
from lmforge.layers.heads import LMHead

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
