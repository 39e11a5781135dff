"""Multi-head self-attention on torch's scaled_dot_product_attention, and the per-layer KV cache.

Outputs always come from SDPA. With `capture_probs = True` the softmax is also computed by hand,
on the side, to keep the (B, H, T, S) probabilities for inspection; outputs are made the same way.
Change the masking or scaling of one, change both, and keep the tests that compare them passing.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.embeddings import RotaryEmbedding


class KVCache:
    """Keys and values of one attention layer during decoding, written in place.

    The (B, H, max_len, D) tensors are allocated on the first write, in the dtype and device of
    the keys written, so a cache made before `model.to(...)` or under autocast still fits.
    `length` counts the positions already written; attention reads `[0:length]`.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H, T, D) keys and values after the cached ones; return all of them."""
        start, end = self.length, self.length + k.shape[-2]
        if end > self.max_len:
            raise ConfigError(
                f"the KV cache holds {self.max_len} positions and {end} were needed; "
                "start a new state with init_state() or keep inputs within max_seq_len"
            )
        if self.k is None:
            B, H, _, D = k.shape
            self.k = k.new_empty(B, H, self.max_len, D)
            self.v = v.new_empty(B, H, self.max_len, D)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, H, S, D) views, S = end

    def reorder(self, rows: Tensor) -> None:
        """Keep (and repeat) batch rows: row i becomes old row rows[i] (beam search)."""
        if self.k is not None:
            self.k = self.k.index_select(0, rows)
            self.v = self.v.index_select(0, rows)


class SlotKVCache:
    """Keys and values of one attention layer for an engine: (slots, H, max_len, D), allocated
    once and written in place. Zeros, not empty: keys past a row's length are masked out, but a
    NaN there would still leak into real rows through 0 * NaN."""

    def __init__(self, slots: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(slots, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)


class SlotBatch:
    """The rows of one forward over an engine's slot caches: row i is slot rows[i], whose T new
    tokens sit at positions starts[i] .. starts[i] + T - 1 of that slot.

    Built once per forward and shared by every layer; `caches` holds one SlotKVCache per layer.
    """

    def __init__(self, caches: list, rows: list[int], starts: list[int], T: int, device):
        self.caches = caches
        n, first = len(rows), rows[0]
        self.rows = torch.tensor(rows, device=device)
        # Slots side by side are read as a view; others are gathered (after a cancel, say).
        contiguous = rows == list(range(first, first + n))
        self.index = slice(first, first + n) if contiguous else self.rows
        arange = torch.arange(max(starts) + T, device=device)
        self.positions = torch.tensor(starts, device=device)[:, None] + arange[:T]  # (n, T)
        self.length = len(arange)  # keys read per row: 0 .. length - 1
        self.mask = (arange <= self.positions[:, :, None])[:, None]  # (n, 1, T, S)
        if n == 1 and T == 1:  # one row, one query: it sees every key read
            self.mask = None
        # where each new (row, head, position) goes in a cache seen as (slots * H * max_len, D)
        _, H, max_len, _ = caches[0].k.shape
        heads = torch.arange(H, device=device)[None, :, None]
        slot_heads = self.rows[:, None, None] * H + heads  # (n, H, 1)
        self.flat = (slot_heads * max_len + self.positions[:, None, :]).flatten()  # n * H * T

    def layer(self, i: int) -> "SlotView":
        return SlotView(self.caches[i], self)

    def write(self, cache: SlotKVCache, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (n, H, T, D) keys and values at each row's positions; return the rows'
        (n, H, S, D) keys and values, S = self.length."""
        D, dtype = k.shape[-1], cache.k.dtype  # keys made under autocast: the cache's dtype
        cache.k.view(-1, D).index_copy_(0, self.flat, k.reshape(-1, D).to(dtype))
        cache.v.view(-1, D).index_copy_(0, self.flat, v.reshape(-1, D).to(dtype))
        return cache.k[self.index, :, : self.length], cache.v[self.index, :, : self.length]


class SlotView:
    """One layer's SlotKVCache and the forward's SlotBatch: what attention gets as its cache."""

    def __init__(self, cache: SlotKVCache, batch: SlotBatch):
        self.cache, self.batch = cache, batch


def attention_mask(
    padding_mask: Tensor | None, T: int, S: int, is_causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean mask (True = may attend) for T queries at positions S - T .. S - 1 over S keys.

    Args:
        padding_mask: (B, S) bool, True = real token; None when nothing is padded.
    Returns:
        None when no mask is needed, else a mask that broadcasts to (B, H, T, S).
    """
    if padding_mask is None and (not is_causal or T == 1):
        return None
    query_pos = torch.arange(S - T, S, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = key_pos <= query_pos if is_causal else None  # (T, S)
    if padding_mask is not None:
        keys = padding_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        mask = keys if mask is None else mask & keys
        # A query whose keys are all padding (left padding) would give NaN, which then leaks into
        # real positions through 0 * NaN; letting every query see itself keeps all rows finite.
        mask = mask | (key_pos == query_pos)
    return mask


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        head_dim: D; defaults to embed_dim // num_heads. The inner width num_heads * head_dim
            may differ from embed_dim (the Keras GPT block: 2 heads of 256 at embed_dim 256).
        dropout: dropout on the attention probabilities (training only).
        rotary: rotate q and k by position (RoPE); needs max_seq_len and an even head_dim.

    Set `capture_probs = True` to also compute the softmax by hand; each forward then stores the
    (B, H, T, S) probabilities (before dropout, float32, detached) in `last_probs`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        is_causal: bool = True,
        rotary: bool = False,
        max_seq_len: int = 2048,
    ):
        super().__init__()
        if head_dim is None:
            if embed_dim % num_heads:
                raise ConfigError(
                    f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                    "change one of them or set head_dim"
                )
            head_dim = embed_dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.inner_dim = num_heads * head_dim
        self.dropout = dropout
        self.is_causal = is_causal
        self.qkv = nn.Linear(embed_dim, 3 * self.inner_dim, bias=use_bias)  # [q | k | v]
        self.out = nn.Linear(self.inner_dim, embed_dim, bias=use_bias)
        self.rotary = RotaryEmbedding(head_dim, max_seq_len) if rotary else None
        self.capture_probs = False
        self.last_probs: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        cache: KVCache | SlotView | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C).

        Args:
            padding_mask: (B, S) bool, True = real token, over all S keys (the cached ones too).
            cache: this layer's KVCache, the new keys and values are appended to it; or an
                engine's SlotView, they are written at each row's own positions.
        """
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, D)
        if isinstance(cache, SlotView):
            return self._slot_forward(q, k, v, cache)
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, S, D), S = start + T
            if k.dtype != q.dtype:  # a cache filled under autocast, read outside it
                k, v = k.to(q.dtype), v.to(q.dtype)
        S = k.shape[-2]
        dropout_p = self.dropout if self.training else 0.0
        if self.capture_probs:  # on the side: the output below is the same with or without
            mask = attention_mask(padding_mask, T, S, self.is_causal, x.device)
            self.last_probs = self._probabilities(q, k, mask)
        if padding_mask is None and self.is_causal and S == T:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            mask = attention_mask(padding_mask, T, S, self.is_causal, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, self.inner_dim)  # (B, T, H * D)
        return self.out(y)

    def _slot_forward(self, q: Tensor, k: Tensor, v: Tensor, view: SlotView) -> Tensor:
        """Attention for an engine's rows, each at its own positions in its own slot."""
        batch = view.batch
        if self.rotary is not None:
            q, k = self.rotary(q, batch.positions), self.rotary(k, batch.positions)
        k, v = batch.write(view.cache, k, v)  # (n, H, S, D)
        if k.dtype != q.dtype:  # a cache in the weights' dtype, read under autocast
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask)
        B, _, T, _ = q.shape
        return self.out(y.transpose(1, 2).reshape(B, T, self.inner_dim))

    def _probabilities(self, q, k, mask):
        """softmax(q k^T / sqrt(D)) as SDPA computes it, in float32 and detached."""
        scores = (q.detach() @ k.detach().transpose(-2, -1)).float() * self.head_dim**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)  # (B, H, T, S)
