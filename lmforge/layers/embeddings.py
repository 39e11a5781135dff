"""Token + position embeddings, and the rotary position embedding that attention applies to q, k.

Fixed tables (sinusoidal, rotary) are non-persistent buffers: they are rebuilt from the config
and never stored in a checkpoint, so they cannot go stale.
"""

import math

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError

POSITIONS = ("learned", "sinusoidal", "none")


def sinusoidal_table(num_positions: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed table of "Attention Is All You Need": sin on even columns, cos on odd ones."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))
    angles = position * inv_freq  # (P, ceil(dim / 2))
    table = torch.empty(num_positions, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class TokenPositionEmbedding(nn.Module):
    """Token embedding plus a position embedding, then dropout.

    Args:
        position: "learned" (a trained table, GPT-2), "sinusoidal" (fixed table) or "none"
            (when attention adds positions itself, e.g. rotary).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        max_seq_len: int,
        position: str = "learned",
        dropout: float = 0.0,
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(
                f"position={position!r} is unknown; use one of {', '.join(POSITIONS)}"
            )
        self.position_kind = position
        self.token = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Embedding(max_seq_len, embed_dim) if position == "learned" else None
        if position == "sinusoidal":
            self.register_buffer(
                "sinusoid", sinusoidal_table(max_seq_len, embed_dim), persistent=False
            )
        else:
            self.sinusoid = None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, token_ids: Tensor, start: int = 0, position_ids: Tensor | None = None
    ) -> Tensor:
        """(B, T) ids -> (B, T, C); `start` is the position of the first token (KV-cache offset).

        Args:
            position_ids: (B, T) long, each token's own position (left-padded rows start later);
                replaces `start` when given.
        """
        x = self.token(token_ids)  # (B, T, C)
        end = start + token_ids.shape[1]
        if self.position is not None:
            if position_ids is None:
                x = x + self.position.weight[start:end]  # a view of the table, no gather
            else:
                x = x + self.position(position_ids)
        elif self.sinusoid is not None:
            rows = slice(start, end) if position_ids is None else position_ids
            x = x + self.sinusoid[rows].to(x.dtype)
        return self.dropout(x)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer) in the rotate-half layout used by GPT-NeoX and Llama.

    Args:
        head_dim: D, must be even; pairs (i, i + D/2) are rotated together.
        max_seq_len: positions precomputed; a position at or past it is an error upstream.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions need an even head_dim, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq  # (P, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int | Tensor = 0) -> Tensor:
        """Rotate (B, H, T, D) queries or keys that sit at positions start .. start + T - 1, or
        at the (B, T) positions `start` gives (an engine's rows, each at its own place)."""
        if isinstance(start, Tensor):
            rows = start[:, None]  # (B, 1, T): broadcasts over the heads
        else:
            rows = slice(start, start + x.shape[-2])
        cos = self.cos[rows].to(x.dtype)  # (T, D) or (B, 1, T, D)
        sin = self.sin[rows].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin
