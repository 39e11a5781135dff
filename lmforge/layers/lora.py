"""LoRA: `LoRALinear` (a frozen nn.Linear plus a trainable low-rank update) and `apply_lora`,
which wraps a model's linear layers by target set, in place; `merge_lora_` folds them back.

Behaviour follows PEFT's LoRA (y = base(x) + B(A(dropout(x))) * alpha / r, A kaiming-uniform
with a=sqrt(5), B zeros, so a new adapter changes nothing). Before editing: the state-dict names
(`base_layer`, `lora_A`, `lora_B`) are what interop/peft.py maps to PEFT's keys.
"""

import math

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError

TARGETS = ("attn", "mlp", "all-linear")  # what --lora-targets names besides module names
# Which linear layers of a block each target set covers (their last name part): the attention
# projections and the feed-forward ones of every family (gpt, llama and bert blocks).
_ATTN = ("attn.qkv", "attn.out")
_MLP = ("ffn.up", "ffn.down", "ffn.gate_up")


class LoRALinear(nn.Module):
    """`base_layer` (frozen) + `lora_B(lora_A(dropout(x))) * scaling`, scaling = alpha / rank.

    Args:
        rank: the inner width r of the update (lora_A: r x in, lora_B: out x r).
        alpha: the update's scale numerator (PEFT's lora_alpha).
        dropout: dropout on the adapter's input only (PEFT's lora_dropout).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        weight = base.weight
        kw = dict(bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_A = nn.Linear(base.in_features, rank, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        """The frozen base weight (its shape and dtype; the update is not in it)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: Tensor) -> Tensor:
        # the scaling on the rank-r activations: the same product as PEFT's (B A x) * scaling,
        # at a fraction of the cost of scaling the full-width output
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x)) * self.scaling)

    def delta(self) -> Tensor:
        """The update as a weight (out, in): scaling * B @ A, in float32."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (base weight + delta)."""
        base = self.base_layer
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        out = out.to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight.float() + self.delta())
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def linear_names(model: nn.Module) -> list[str]:
    """The names of the linear layers LoRA can wrap: every nn.Linear of `model.backbone` (the
    head stays out, as PEFT's all-linear leaves the output layer out), relative to the model."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return []
    return [
        f"backbone.{name}"
        for name, m in backbone.named_modules()
        if isinstance(m, (nn.Linear, LoRALinear))
        and ".lora_" not in name
        and not name.endswith("base_layer")
    ]


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """The full names of the linear layers that `targets` picks: "attn", "mlp", "all-linear", or
    a comma-separated list of name endings ("qkv,down"). ConfigError naming the layers there are
    when it picks none."""
    names = linear_names(model)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    picked = []
    for name in names:
        short = name.split(".blocks.")[-1].split(".", 1)[-1] if ".blocks." in name else name
        for target in targets:
            if target == "all-linear":
                hit = True
            elif target == "attn":
                hit = short in _ATTN
            elif target == "mlp":
                hit = short in _MLP
            else:
                hit = name == target or name.endswith("." + target)
            if hit:
                picked.append(name)
                break
    if not names:
        raise ConfigError(
            f"--lora-rank: a {type(model).__name__} has no linear layers in its backbone for LoRA "
            "to wrap: drop --lora-rank, or train a gpt, llama or bert model"
        )
    if not picked:
        kinds = sorted({n.split(".blocks.")[-1].split(".", 1)[-1] for n in names})
        there = ", ".join(kinds)
        raise ConfigError(
            f"--lora-targets {','.join(targets)} matches no module of this "
            f"{type(model).__name__}; its linear layers: {there}; use {'|'.join(TARGETS)} or "
            "some of those names"
        )
    return picked


def check_options(rank: int, alpha: float | None, dropout: float) -> None:
    """ConfigError for a rank below 1, a non-positive alpha, or a dropout outside [0, 1)."""
    if rank < 1:
        raise ConfigError(f"--lora-rank {rank} is not a rank: give 1 or more (8 is common)")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"--lora-alpha {alpha:g} must be positive (e.g. twice --lora-rank)")
    if not 0 <= dropout < 1:
        raise ConfigError(f"--lora-dropout {dropout:g} must be in [0, 1) (e.g. 0.05)")


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: str | list[str] = "all-linear",
    ranks: dict[str, tuple[int, float]] | None = None,
) -> list[str]:
    """Freeze `model` and wrap the linear layers `targets` picks in LoRALinear, in place; returns
    their names. Only the adapters train; a head the caller wants trained is unfrozen after.

    Args:
        ranks: {layer name: (rank, alpha)} overriding rank and alpha per layer (an adapter
            imported with a different A per fused q/k/v part, lmforge.interop.peft).

    Example:
        apply_lora(model, rank=8, alpha=16, targets="attn")
        optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    """
    check_options(rank, alpha, dropout)
    names = resolve_targets(model, targets)
    model.requires_grad_(False)
    ranks = ranks or {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        if isinstance(layer, LoRALinear):
            raise ConfigError(f"{name} has a LoRA adapter already: merge it first")
        r, a = ranks.get(name, (rank, alpha))
        setattr(parent, child, LoRALinear(layer, r, a, dropout))
    return names


def merge_lora_(model: nn.Module) -> int:
    """Replace every LoRALinear of `model` with the plain nn.Linear it computes, in place;
    returns how many there were. The merged model's parameters are all trainable again."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                count += 1
    if count:
        model.requires_grad_(True)
    return count


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{name: LoRALinear} of `model`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
