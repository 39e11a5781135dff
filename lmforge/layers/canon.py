"""Canon layers: a short causal depthwise convolution with a residual, mixing each position with
the few before it (Allen-Zhu, "Physics of Language Models: Part 4.1", arXiv 2512.17351).

y_t = h_t + sum_j w_j * h_(t-j), j = 0 .. width - 1, one weight per channel and offset, zero at
first (a new Canon layer changes nothing). Attention can move a neighbour's state too, but it
spends layers on it; this path costs width multiply-adds per value, which torch.compile fuses
into the neighbouring kernels.

Decoding needs the inputs of the width - 1 positions before the new tokens, so a Canon layer
keeps them in the block's cache: a KVCache holds the last width - 1 (its positions only grow),
an engine's slot cache every position (a row may restart anywhere, beams copy slots).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.layers.attention import KVCache, SlotView


class Canon(nn.Module):
    """h (B, T, C) -> h plus a causal depthwise convolution of it over the last `width` positions.

    Args:
        dim: channels C.
        width: positions each output reads (itself and width - 1 before it).
        name: the key of its inputs in a block's cache (two Canon layers of one block differ).
    """

    def __init__(self, dim: int, width: int = 4, name: str = "canon"):
        super().__init__()
        self.width, self.name = width, name
        self.weight = nn.Parameter(torch.zeros(width, dim))  # weight[-1] multiplies h_t itself

    def forward(
        self,
        h: Tensor,
        padding_mask: Tensor | None = None,
        cache: KVCache | SlotView | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C).

        Args:
            padding_mask: (B, S) bool over every key (cached ones too), True = real; a pad
                position gives nothing to the positions after it.
            cache: a KVCache (its last width - 1 inputs are read and kept) or an engine's
                SlotView (each row reads the positions before its own in its slot).
            document_ids: (B, T) packed rows: no position reads one of another example.
        """
        if isinstance(cache, SlotView):
            return self._slots(h, cache)
        T, keep = h.shape[1], self.width - 1
        x = h if padding_mask is None else h * padding_mask[:, -T:, None].to(h.dtype)
        past = None if cache is None else cache.canon.get(self.name)
        # (B, keep + T, C): zeros before the first position, else the inputs kept from before
        padded = F.pad(x, (0, 0, keep, 0)) if past is None else torch.cat([past.to(x.dtype), x], 1)
        if cache is not None:
            cache.canon[self.name] = padded[:, -keep:].detach()
        ids = None if document_ids is None else F.pad(document_ids, (keep, 0), value=-1)
        y = h
        for j in range(self.width):  # weight[j] reads h_(t - keep + j)
            part = padded[:, j : j + T]
            if ids is not None and j < keep:  # only from the same example
                part = part * (ids[:, j : j + T] == document_ids)[..., None].to(part.dtype)
            y = y + self.weight[j] * part
        return y

    def _slots(self, h: Tensor, view: SlotView) -> Tensor:
        """Packed tokens (1, N, C) of an engine's step: each group's rows write their inputs at
        their positions of this layer's (slots, max_len, C) store, then read the width - 1
        positions before each token (none before position 0)."""
        store = view.cache.canon[self.name]
        flat = store.view(-1, store.shape[-1])  # (slots * max_len, C)
        keep, out = self.width - 1, []
        for group, part in zip(view.batch.groups, h[0].split(view.batch.sizes)):
            where, back, seen = _window(group, store.shape[1], keep)
            flat.index_copy_(0, where, part.to(flat.dtype))
            past = flat.index_select(0, back).view(-1, keep, flat.shape[-1]).to(part.dtype)
            mix = (past * seen.to(part.dtype) * self.weight[:-1]).sum(1)  # (n * T, C)
            out.append(part * (1 + self.weight[-1]) + mix)
        return (out[0] if len(out) == 1 else torch.cat(out))[None]


def _window(group, max_len: int, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where a group's tokens sit in a store seen as (slots * max_len, C) (n * T), the places of
    the `keep` positions before each (n * T * keep, oldest first) and which of those exist
    (n * T, keep, 1); made once per forward and shared by every layer."""
    cached = group.__dict__.setdefault("canon_window", {})
    if keep not in cached:
        base = group.rows[:, None, None] * max_len  # (n, 1, 1)
        before = group.positions[..., None] - torch.arange(keep, 0, -1, device=base.device)
        where = (base[..., 0] + group.positions).flatten()
        back = (base + before.clamp(min=0)).flatten()
        cached[keep] = (where, back, (before >= 0).flatten(0, 1)[..., None])
    return cached[keep]
