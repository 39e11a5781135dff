"""Multi-head self-attention on torch's scaled_dot_product_attention, and the per-layer KV cache.

Outputs always come from SDPA. With `capture_probs = True` the softmax is also computed by hand,
on the side, to keep the (B, H, T, S) probabilities for inspection; outputs are made the same way.
Change the masking or scaling of one, change both, and keep the tests that compare them passing.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers import cpu_attention
from lmforge.layers.embeddings import RotaryEmbedding


class KVCache:
    """Keys and values of one attention layer during decoding, written in place.

    The (B, H, P, D) tensors are allocated on the first write, in the dtype and device of the
    keys written, so a cache made before `model.to(...)` or under autocast still fits. P starts
    at 256 positions (or what the first write needs) and doubles when full, up to max_len: a
    model with a 32k context does not hold 32k positions for a short reply. `length` counts
    the positions already written; attention reads `[0:length]`. `canon` holds the block's
    Canon layers' last inputs by name (layers/canon.py).
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.canon: dict[str, Tensor] = {}

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H, T, D) keys and values after the cached ones; return all of them."""
        start, end = self.length, self.length + k.shape[-2]
        if end > self.max_len:
            raise ConfigError(
                f"the KV cache holds {self.max_len} positions and {end} were needed; "
                "start a new state with init_state() or keep inputs within max_seq_len"
            )
        held = 0 if self.k is None else self.k.shape[-2]
        if end > held:  # allocate, or grow: twice as many positions, at most max_len
            B, H, _, D = k.shape
            size = min(self.max_len, max(end, 2 * held, 256))
            grown_k, grown_v = k.new_empty(B, H, size, D), v.new_empty(B, H, size, D)
            if start:
                grown_k[:, :, :start], grown_v[:, :, :start] = (
                    self.k[:, :, :start],
                    self.v[:, :, :start],
                )
            self.k, self.v = grown_k, grown_v
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, H, S, D) views, S = end


class KVState:
    """What a transformer decoder carries between decoding steps: one KVCache per block, and
    the (B, S) padding mask of every cached position once some input was padded (None while
    none was)."""

    def __init__(self, caches: list[KVCache]):
        self.caches = caches
        self.padding_mask: Tensor | None = None

    def extend_mask(self, padding_mask: Tensor | None, token_ids: Tensor) -> Tensor | None:
        """Append the new tokens' (B, t) mask (None = all real); return the (B, S) mask or None."""
        if padding_mask is not None and self.padding_mask is None and bool(padding_mask.all()):
            padding_mask = None  # nothing padded: keep the faster unmasked attention
        if padding_mask is None and self.padding_mask is None:
            return None
        if self.padding_mask is None:  # the first padded input: everything cached was real
            B, S = token_ids.shape[0], self.caches[0].length
            self.padding_mask = torch.ones(B, S, dtype=torch.bool, device=token_ids.device)
        if padding_mask is None:
            padding_mask = torch.ones_like(token_ids, dtype=torch.bool)
        self.padding_mask = torch.cat([self.padding_mask, padding_mask.to(torch.bool)], dim=1)
        return self.padding_mask


class SlotKVCache:
    """Keys and values of one attention layer for an engine: (slots, H, max_len, D), allocated
    once and written in place. Zeros, not empty: keys past a row's length are masked out, but a
    NaN there would still leak into real rows through 0 * NaN. `canon`: the block's Canon
    layers' inputs by name, (slots, max_len, C) each (TransformerLM.init_slots adds them)."""

    def __init__(self, slots: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(slots, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.canon: dict[str, Tensor] = {}


def slot_caches(attns: list, slots: int, max_len: int, dtype, device) -> list[SlotKVCache]:
    """One SlotKVCache of (slots, KV, max_len, D) per MultiHeadAttention in `attns`: key/value
    heads only, so a grouped-query cache is num_heads / num_kv_heads times smaller."""
    return [SlotKVCache(slots, a.num_kv_heads, max_len, a.head_dim, dtype, device) for a in attns]


def slot_cache_bytes(attns: list, slots: int, max_len: int, itemsize: int) -> int:
    """Bytes that slot_caches(attns, slots, max_len, ...) allocates, `itemsize` bytes a value."""
    return sum(2 * slots * a.num_kv_heads * max_len * a.head_dim for a in attns) * itemsize


class SlotRows:
    """Rows of one forward that read the same number T of new tokens: row i is slot rows[i],
    whose tokens sit at positions starts[i] .. starts[i] + T - 1 of that slot."""

    def __init__(self, cache: SlotKVCache, rows: list[int], starts: list[int], T: int, device):
        n, first = len(rows), rows[0]
        self.shape = (n, T)
        self.rows = torch.tensor(rows, device=device)
        # Slots side by side are read as a view; others are gathered (after a cancel, say).
        contiguous = rows == list(range(first, first + n))
        self.index = slice(first, first + n) if contiguous else self.rows
        self._arange = torch.arange(max(starts) + T, device=device)
        self.positions = torch.tensor(starts, device=device)[:, None] + self._arange[:T]  # (n, T)
        self.length = len(self._arange)  # keys read per row: 0 .. length - 1
        self._heads, self._max_len = cache.k.shape[1], cache.k.shape[2]

    # The mask and the write places are made when the Python attention first asks (the fused
    # decode kernels read rows and positions only).
    @functools.cached_property
    def mask(self) -> Tensor | None:
        """(n, 1, T, S) True where a query may see a key; None for one row of one query (it sees
        every key read)."""
        if self.shape == (1, 1):
            return None
        return (self._arange <= self.positions[:, :, None])[:, None]

    @functools.cached_property
    def flat(self) -> Tensor:
        """Where each new (row, head, position) goes in a cache seen as (slots * H * max_len, D)."""
        heads = torch.arange(self._heads, device=self.rows.device)[None, :, None]
        slot_heads = self.rows[:, None, None] * self._heads + heads  # (n, H, 1)
        return (slot_heads * self._max_len + self.positions[:, None, :]).flatten()  # n * H * T

    def write(self, cache: SlotKVCache, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (n, H, T, D) keys and values at each row's positions; return the rows'
        (n, H, S, D) keys and values, S = self.length."""
        D, dtype = k.shape[-1], cache.k.dtype  # keys made under autocast: the cache's dtype
        cache.k.view(-1, D).index_copy_(0, self.flat, k.reshape(-1, D).to(dtype))
        cache.v.view(-1, D).index_copy_(0, self.flat, v.reshape(-1, D).to(dtype))
        return cache.k[self.index, :, : self.length], cache.v[self.index, :, : self.length]


class SlotBatch:
    """Every token of one forward over an engine's slot caches, packed in one sequence: groups
    of rows (rows, starts, T) one after the other, each row's T tokens in order. Rows decoding
    one token and prompt chunks of any length so share one forward: the linear layers read
    their weights once for all the tokens; only attention goes group by group, in the order
    given (where two groups write the same cache place, the later one wins).

    Built once per forward and shared by every layer; `caches` holds one SlotKVCache per layer.
    `positions` (1, N): each packed token's position in its slot; `last` (rows,): the packed
    index of each row's last token, where its next token is predicted.
    """

    def __init__(self, caches: list, groups: list[tuple[list[int], list[int], int]], device):
        self.caches = caches
        self.groups = [SlotRows(caches[0], rows, starts, T, device) for rows, starts, T in groups]
        self.sizes = [n * T for n, T in (g.shape for g in self.groups)]
        self.positions = torch.cat([g.positions.flatten() for g in self.groups])[None]
        last, offset = [], 0
        for (_, T), size in zip((g.shape for g in self.groups), self.sizes):
            last += range(offset + T - 1, offset + size, T)
            offset += size
        self.last = torch.tensor(last, device=device)

    def layer(self, i: int) -> "SlotView":
        return SlotView(self.caches[i], self)


class SlotView:
    """One layer's SlotKVCache and the forward's SlotBatch: what attention gets as its cache."""

    def __init__(self, cache: SlotKVCache, batch: SlotBatch):
        self.cache, self.batch = cache, batch


# torch 2.5 added enable_gqa: SDPA reads each key/value head for its group of query heads.
GQA_IN_SDPA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def sdpa(q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
    """F.scaled_dot_product_attention of (B, H, T, D) queries over (B, KV, S, D) keys and
    values, KV dividing H: the groups are shared inside SDPA where torch has enable_gqa, else
    the key/value heads are repeated first (torch 2.4)."""
    if cpu_attention.wanted(q, k, options):  # compiled bf16 training on a CPU
        return cpu_attention.CausalAttention.apply(q, k, v)
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and GQA_IN_SDPA:
        options["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, **options)


def attention_mask(
    padding_mask: Tensor | None,
    T: int,
    S: int,
    is_causal: bool,
    device: torch.device,
    window: int | None = None,
) -> Tensor | None:
    """Boolean mask (True = may attend) for T queries at positions S - T .. S - 1 over S keys.

    Args:
        padding_mask: (B, S) bool, True = real token; None when nothing is padded.
        window: causal only: a query sees itself and the window - 1 keys before it (Mistral's
            sliding window); None sees every earlier key.
    Returns:
        None when no mask is needed, else a mask that broadcasts to (B, H, T, S).
    """
    windowed = window is not None and S > window
    if padding_mask is None and (not is_causal or T == 1) and not windowed:
        return None
    query_pos = torch.arange(S - T, S, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    mask = key_pos <= query_pos if is_causal else None  # (T, S)
    if windowed:
        mask = mask & (key_pos > query_pos - window)
    if padding_mask is not None:
        keys = padding_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        mask = keys if mask is None else mask & keys
        # A query whose keys are all padding (left padding) would give NaN, which then leaks into
        # real positions through 0 * NaN; letting every query see itself keeps all rows finite.
        mask = mask | (key_pos == query_pos)
    return mask


def document_positions(document_ids: Tensor) -> Tensor:
    """(B, T) ids of the example each token of a packed row belongs to -> (B, T) positions that
    restart at 0 where a new example starts (examples are contiguous runs of one id)."""
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values  # where each token's example began
    return index - first


def document_mask(document_ids: Tensor, window: int | None = None) -> Tensor:
    """Block-diagonal causal mask of packed rows, (B, 1, T, T), True = may attend: a query sees
    the earlier keys of its own example only (and, with `window`, only the window - 1 last)."""
    T = document_ids.shape[1]
    query_pos = torch.arange(T, device=document_ids.device)[:, None]  # (T, 1)
    key_pos = torch.arange(T, device=document_ids.device)[None, :]  # (1, T)
    mask = (document_ids[:, :, None] == document_ids[:, None, :]) & (key_pos <= query_pos)
    if window is not None:
        mask = mask & (key_pos > query_pos - window)
    return mask[:, None]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, rows [q | k | v].

    Args:
        head_dim: D; defaults to embed_dim // num_heads. The inner width num_heads * head_dim
            may differ from embed_dim (the Keras GPT block: 2 heads of 256 at embed_dim 256).
        dropout: dropout on the attention probabilities (training only).
        rotary: rotate q and k by position (RoPE); needs max_seq_len and an even head_dim. A
            RotaryEmbedding is used as given (one shared by every layer, scaled frequencies).
        num_kv_heads: grouped-query attention: key/value heads, each shared by num_heads /
            num_kv_heads query heads (None: as many as query heads). Caches hold this many.
        qk_norm_eps: RMS-normalise each head's queries and keys before rotary (Qwen3), with
            this epsilon; None: no such norm.
        sliding_window: causal only: each query sees itself and the sliding_window - 1 keys
            before it (Mistral); None: every earlier key.
        qkv_bias: a bias on the qkv projection only (Qwen2); None: as use_bias.

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
        rotary: "bool | RotaryEmbedding" = False,
        max_seq_len: int = 2048,
        num_kv_heads: int | None = None,
        qk_norm_eps: float | None = None,
        sliding_window: int | None = None,
        qkv_bias: bool | None = None,
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ConfigError(
                f"num_heads={num_heads} do not divide into num_kv_heads={num_kv_heads} groups; "
                "pick num_kv_heads among the divisors of num_heads"
            )
        if head_dim is None:
            if embed_dim % num_heads:
                raise ConfigError(
                    f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                    "change one of them or set head_dim"
                )
            head_dim = embed_dim // num_heads
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.inner_dim = num_heads * head_dim
        self.dropout = dropout
        self.is_causal = is_causal
        self.sliding_window = sliding_window
        self.splits = [self.inner_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        qkv_bias = use_bias if qkv_bias is None else qkv_bias
        self.qkv = nn.Linear(embed_dim, sum(self.splits), bias=qkv_bias)  # [q | k | v]
        self.out = nn.Linear(self.inner_dim, embed_dim, bias=use_bias)
        if qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        if isinstance(rotary, RotaryEmbedding):
            self.rotary = rotary
        else:
            self.rotary = RotaryEmbedding(head_dim, max_seq_len) if rotary else None
        self.capture_probs = False
        self.last_probs: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        cache: KVCache | SlotView | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C).

        Args:
            padding_mask: (B, S) bool, True = real token, over all S keys (the cached ones too).
            cache: this layer's KVCache, the new keys and values are appended to it; or an
                engine's SlotView, they are written at each row's own positions.
            document_ids: (B, T) packed rows (training, no cache): which example each token
                belongs to; attention stays inside an example, rotary positions restart at 0.
        """
        if isinstance(cache, SlotView):
            return self._slot_forward(x, cache)
        B, T, _ = x.shape
        q, k, v = self._project(x)  # (B, H, T, D), (B, KV, T, D) twice
        start = cache.length if cache is not None else 0
        packed = None
        if document_ids is not None:
            start = document_positions(document_ids)  # (B, T)
            packed = document_mask(document_ids, self.sliding_window)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, S, D), S = start + T
            if k.dtype != q.dtype:  # a cache filled under autocast, read outside it
                k, v = k.to(q.dtype), v.to(q.dtype)
        S = k.shape[-2]
        dropout_p = self.dropout if self.training else 0.0
        window = self.sliding_window
        if self.capture_probs:  # on the side: the output below is the same with or without
            mask = attention_mask(padding_mask, T, S, self.is_causal, x.device, window)
            self.last_probs = self._probabilities(q, k, mask if packed is None else packed)
        if packed is not None:
            y = sdpa(q, k, v, attn_mask=packed, dropout_p=dropout_p)
        elif padding_mask is None and self.is_causal and S == T and (window or S) >= S:
            y = sdpa(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            mask = attention_mask(padding_mask, T, S, self.is_causal, x.device, window)
            y = sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, self.inner_dim)  # (B, T, H * D)
        return self.out(y)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> queries (B, H, T, D), keys and values (B, KV, T, D), q/k normed."""
        return self._heads(self.qkv(x))

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The qkv projection's (B, T, .) output as queries (B, H, T, D), keys and values
        (B, KV, T, D), q/k normed."""
        B, T, _ = qkv.shape
        q, k, v = qkv.split(self.splits, dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # over each head's D (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _slot_forward(self, x: Tensor, view: SlotView) -> Tensor:
        """Attention for an engine's packed tokens (1, N, C), each at its own position in its own
        slot: one qkv and one output projection for all, attention group by group."""
        batch, out = view.batch, []
        qkv = self.qkv(x[0])  # (N, .): the weights read once for every token of the step
        for group, part in zip(batch.groups, qkv.split(batch.sizes)):
            q, k, v = self._heads(part.view(*group.shape, -1))  # (n, H, T, D), (n, KV, T, D)
            if self.rotary is not None:
                q, k = self.rotary(q, group.positions), self.rotary(k, group.positions)
            k, v = group.write(view.cache, k, v)  # (n, KV, S, D)
            if k.dtype != q.dtype:  # a cache in the weights' dtype, read under autocast
                k, v = k.to(q.dtype), v.to(q.dtype)
            mask = group.mask
            if self.sliding_window is not None and group.length > self.sliding_window:
                keys = torch.arange(group.length, device=q.device)  # (S,)
                near = keys > group.positions[:, None, :, None] - self.sliding_window
                mask = near if mask is None else mask & near  # (n, 1, T, S)
            y = sdpa(q, k, v, attn_mask=mask)  # (n, H, T, D)
            out.append(y.transpose(1, 2).reshape(-1, self.inner_dim))
        return self.out(torch.cat(out) if len(out) > 1 else out[0])[None]  # (1, N, C)

    def _probabilities(self, q, k, mask):
        """softmax(q k^T / sqrt(D)) as SDPA computes it, in float32 and detached."""
        k = k.detach().repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)  # (B, H, S, D)
        scores = (q.detach() @ k.transpose(-2, -1)).float() * self.head_dim**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)  # (B, H, T, S)
