"""Token + position embeddings, and the rotary position embedding that attention applies to q, k.

Fixed tables (sinusoidal, rotary) are non-persistent buffers: they are rebuilt from the config
and never stored in a checkpoint, so they cannot go stale.
"""

import math

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.dropout import Dropout

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
        self.dropout = Dropout(dropout)

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


# How rotary frequencies are stretched for contexts longer than the pretraining one: "none",
# "linear" (every frequency divided by `factor`), or "llama3" (Llama 3.1: long wavelengths divided
# by `factor`, short ones kept, a smooth blend between).
ROPE_SCALINGS = ("none", "linear", "llama3")


def rotary_inv_freq(
    head_dim: int,
    base: float = 10000.0,
    scaling: str = "none",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_len: int = 8192,
) -> Tensor:
    """The (D/2,) rotation frequencies of RoPE, stretched by a ROPE_SCALINGS rule.

    The llama3 rule and its defaults (factor 8, low 1, high 4, original context 8192) come from
    Meta's Llama 3.1 reference code, as transformers' `_compute_llama3_parameters` applies them.
    """
    if scaling not in ROPE_SCALINGS:
        raise ConfigError(
            f"rope scaling {scaling!r} is unknown; lmforge knows {', '.join(ROPE_SCALINGS)}"
        )
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling == "linear":
        return inv_freq / factor
    if scaling == "llama3":
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = original_max_len / low_freq_factor  # longer: divided by factor
        high_wavelen = original_max_len / high_freq_factor  # shorter: kept
        smooth = (original_max_len / wavelen - low_freq_factor) / (
            high_freq_factor - low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer) in the rotate-half layout used by GPT-NeoX and Llama.

    Args:
        head_dim: D, must be even; pairs (i, i + D/2) are rotated together.
        max_seq_len: positions precomputed; a position at or past it is an error upstream.
        scaling: a ROPE_SCALINGS rule and its arguments (see rotary_inv_freq), e.g.
            {"scaling": "llama3", "factor": 8.0}; None for plain RoPE.

    The tables hold no weights, so one module may serve every layer of a model.
    """

    def __init__(
        self, head_dim: int, max_seq_len: int, base: float = 10000.0, scaling: dict | None = None
    ):
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions need an even head_dim, got {head_dim}")
        inv_freq = rotary_inv_freq(head_dim, base, **(scaling or {}))
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
