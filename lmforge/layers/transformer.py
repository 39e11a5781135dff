"""TransformerBlock (causal or not, pre- or post-norm) and its FeedForward.

Module names here (attn, attn_norm, ffn.up, ffn.down, ffn_norm) are the keys that every family's
HF_NAMES table maps onto; renaming one breaks checkpoint conversion.
"""

import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import KVCache, MultiHeadAttention
from lmforge.layers.canon import Canon
from lmforge.layers.dropout import Dropout

# "gelu" is the exact (erf) GELU of BERT and nanoGPT; "gelu_tanh" is the tanh approximation that
# GPT-2 calls "gelu_new". They differ by up to ~1e-3, enough to break parity with a checkpoint.
ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}


class FeedForward(nn.Module):
    """Position-wise feed-forward network: up to ffn_dim, activation, back down, dropout.

    Args:
        activation: "relu", "gelu" (exact) or "gelu_tanh" (GPT-2's approximation).
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        use_bias: bool = True,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation={activation!r} is unknown; use one of {', '.join(ACTIVATIONS)}"
            )
        self.up = nn.Linear(embed_dim, ffn_dim, bias=use_bias)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(ffn_dim, embed_dim, bias=use_bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(self.act(self.up(x))))  # (B, T, C)


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward, each with a residual connection and a LayerNorm.

    Args:
        norm_first: True normalises before each sublayer (pre-norm, GPT-2); False after the
            residual sum (post-norm, the original Transformer and the Keras GPT tutorial).
        is_causal: True for decoders (a position never sees the future), False for encoders.
        dropout: used on the attention probabilities, after attention and after the FFN.
        attention_dropout: replaces dropout on the attention probabilities when not None.
        rotary: rotary positions inside attention (then the embedding adds none).
        canon: pre-norm only: a Canon layer of this width (layers/canon.py) on the normalised
            input of the attention and of the feed-forward (the paper's Canon-A and -C); 0: none.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
        norm_first: bool = True,
        is_causal: bool = True,
        use_bias: bool = True,
        layer_norm_eps: float = 1e-5,
        rotary: bool = False,
        max_seq_len: int = 2048,
        attention_dropout: float | None = None,
        canon: int = 0,
    ):
        super().__init__()
        if canon and not norm_first:
            raise ConfigError("canon layers need a pre-norm block (norm_first=True)")
        self.norm_first = norm_first
        p = dropout if attention_dropout is None else attention_dropout
        self.attn = MultiHeadAttention(
            embed_dim, num_heads, head_dim, p, use_bias, is_causal, rotary, max_seq_len
        )
        self.attn_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=use_bias)
        self.attn_dropout = Dropout(dropout)
        self.ffn = FeedForward(embed_dim, ffn_dim, activation, dropout, use_bias)
        self.ffn_norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps, bias=use_bias)
        if canon:
            self.attn_canon = Canon(embed_dim, canon, "attn")
            self.ffn_canon = Canon(embed_dim, canon, "ffn")
        else:
            self.attn_canon = self.ffn_canon = None

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); `padding_mask`, `cache` and `document_ids` go to the
        attention."""
        if self.norm_first:
            h = self.attn_norm(x)
            if self.attn_canon is not None:
                h = self.attn_canon(h, padding_mask, cache, document_ids)
            x = x + self.attn_dropout(self.attn(h, padding_mask, cache, document_ids))
            h = self.ffn_norm(x)
            if self.ffn_canon is not None:
                h = self.ffn_canon(h, padding_mask, cache, document_ids)
            return x + self.ffn(h)
        x = self.attn_norm(x + self.attn_dropout(self.attn(x, padding_mask, cache, document_ids)))
        return self.ffn_norm(x + self.ffn(x))
