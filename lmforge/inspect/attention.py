"""capture_attention(): the attention probabilities of every layer, gathered during a forward pass.

Works on any model built from `layers.attention.MultiHeadAttention` (GPT now, BERT later); the
model's outputs are computed the same way inside and outside the context (SDPA still makes them;
the probabilities are computed on the side).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import MultiHeadAttention


def attention_modules(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's attention modules in registration order (= layer order for our families)."""
    found = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no MultiHeadAttention layers, so there is no attention to "
            "capture; inspect a transformer (GPT or BERT family)"
        )
    return found


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the attention probabilities of every layer during forward passes in the context.

    Yields a list that the next forward pass fills with one (B, H, T, S) float32 tensor per layer
    (S = T without a KV cache); each later pass replaces the previous pass's maps. Rows sum to 1
    over the S keys; masked keys (future positions, padding) get exactly 0.

    Example:
        with capture_attention(model) as maps:
            logits = model(token_ids)
        maps[0].shape  # (B, H, T, T), first layer
    """
    modules = attention_modules(model)
    maps: list[Tensor] = []
    latest: dict[int, Tensor] = {}

    def keep(index: int):
        def hook(module: MultiHeadAttention, args, output) -> None:
            if index == 0:  # the first layer opens a new pass: forget the previous one
                latest.clear()
            latest[index] = module.last_probs
            maps[:] = [latest[i] for i in sorted(latest)]

        return hook

    saved = [m.capture_probs for m in modules]
    handles = []
    try:
        for index, module in enumerate(modules):
            module.capture_probs = True
            handles.append(module.register_forward_hook(keep(index)))
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(modules, saved):
            module.capture_probs = flag
            module.last_probs = None  # the maps live on in `maps`; the modules drop theirs


def average_heads(layer_map: Tensor) -> Tensor:
    """(..., H, T, S) -> (..., T, S): the mean over heads, still a distribution in each row."""
    return layer_map.mean(dim=-3)
