"""Llama-style decoders: RMSNorm, SwiGLU, rotary positions, grouped-query attention.

One architecture told apart by config switches: q/k/v biases (Qwen2), per-head q/k RMSNorm with
an explicit head_dim (Qwen3), a sliding window (Mistral), tied or untied output head, and the
rotary scaling rules. Llama, Mistral, Qwen2 and Qwen3 checkpoints load through HF_NAMES. Module
names are lmforge's own: rename one and update HF_NAMES in the same change.
"""

import math
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import (
    KVCache,
    MultiHeadAttention,
    SlotBatch,
)
from lmforge.layers.dropout import Dropout
from lmforge.layers.embeddings import ROPE_SCALINGS, RotaryEmbedding
from lmforge.layers.heads import LMHead
from lmforge.layers.layout import MAX_ROWS, hooked, int8_path, linear_params, stack_step
from lmforge.models.base import Backbone, TransformerLM, check_config, init_normal

# ---------------------------------------------------------------- config


@dataclass
class LlamaConfig:
    """Shape and switches of a Llama-style decoder; the defaults are a tiny model for a CPU.

    num_kv_heads: key/value heads of grouped-query attention (None or num_heads: plain
    multi-head). head_dim None means embed_dim // num_heads (and is set so). qkv_bias: biases
    on the q, k and v projections (Qwen2). qk_norm: RMSNorm over each head's queries and keys
    (Qwen3). sliding_window: each token sees itself and the sliding_window - 1 tokens before it
    (Mistral); None sees all. rope_base is the rotary base ("rope_theta"); rope_scaling "none",
    "linear" or "llama3" with the rope_* values it reads (layers.embeddings.rotary_inv_freq).
    dropout is used on the residual branches and the attention probabilities; attention_dropout,
    when set, replaces it on the probabilities alone (as GPTConfig's).
    """

    vocab_size: int = 256
    max_seq_len: int = 64
    embed_dim: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = 2
    head_dim: int | None = None
    num_layers: int = 2
    ffn_dim: int = 172
    dropout: float = 0.0
    attention_dropout: float | None = None
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192

    def __post_init__(self):
        check_config(
            self,
            (
                "vocab_size",
                "max_seq_len",
                "embed_dim",
                "num_heads",
                "num_layers",
                "ffn_dim",
                "rope_original_max_len",
            ),
            {"rope_scaling": ROPE_SCALINGS},
        )
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        kv = self.num_kv_heads
        if not isinstance(kv, int) or isinstance(kv, bool) or kv < 1:
            raise ConfigError(f"num_kv_heads={kv!r} must be a positive integer or None")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} do not divide into num_kv_heads={self.num_kv_heads} "
                "groups; pick num_kv_heads among the divisors of num_heads"
            )
        if self.head_dim is None:
            if self.embed_dim % self.num_heads:
                raise ConfigError(
                    f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                    "change one of them or set head_dim"
                )
            self.head_dim = self.embed_dim // self.num_heads
        elif not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ConfigError(f"head_dim={self.head_dim!r} must be a positive integer or None")
        if self.head_dim % 2:
            raise ConfigError(
                "rotary positions need an even head_dim; change embed_dim, num_heads or head_dim"
            )
        window = self.sliding_window
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ConfigError(f"sliding_window={window!r} must be a positive integer or None")
        for name in ("norm_eps", "rope_base", "rope_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        if (
            self.rope_scaling == "llama3"
            and self.rope_high_freq_factor <= self.rope_low_freq_factor
        ):
            raise ConfigError(
                f"rope_high_freq_factor={self.rope_high_freq_factor} must be above "
                f"rope_low_freq_factor={self.rope_low_freq_factor} (Llama 3.1: 4 and 1)"
            )

    def rope(self) -> dict:
        """The rotary scaling rule and its arguments, as layers.embeddings.rotary_inv_freq
        takes them."""
        return dict(
            scaling=self.rope_scaling,
            factor=self.rope_factor,
            low_freq_factor=self.rope_low_freq_factor,
            high_freq_factor=self.rope_high_freq_factor,
            original_max_len=self.rope_original_max_len,
        )


# ---------------------------------------------------------------- blocks


class LlamaFeedForward(nn.Module):
    """SwiGLU (Shazeer, 2020): down(silu(gate(x)) * up(x)), no biases; gate and up are one
    fused projection, rows [gate | up], so both come from one matmul."""

    def __init__(self, embed_dim: int, ffn_dim: int):
        super().__init__()
        self.gate_up = nn.Linear(embed_dim, 2 * ffn_dim, bias=False)
        self.down = nn.Linear(ffn_dim, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # 2 x (B, T, F)
        return self.down(F.silu(gate) * up)  # (B, T, C)


class LlamaBlock(nn.Module):
    """Pre-norm block: x + attn(rmsnorm(x)), then x + ffn(rmsnorm(x)).

    Args:
        rotary: the backbone's RotaryEmbedding, shared by every block.
    """

    def __init__(self, c: LlamaConfig, rotary: RotaryEmbedding):
        super().__init__()
        self.attn_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.attn = MultiHeadAttention(
            c.embed_dim,
            c.num_heads,
            c.head_dim,
            c.dropout if c.attention_dropout is None else c.attention_dropout,
            use_bias=False,
            is_causal=True,
            rotary=rotary,
            num_kv_heads=c.num_kv_heads,
            qk_norm_eps=c.norm_eps if c.qk_norm else None,
            sliding_window=c.sliding_window,
            qkv_bias=c.qkv_bias,
        )
        self.ffn_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.ffn = LlamaFeedForward(c.embed_dim, c.ffn_dim)
        self.dropout = Dropout(c.dropout)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); `padding_mask`, `cache` and `document_ids` go to the
        attention."""
        x = x + self.dropout(self.attn(self.attn_norm(x), padding_mask, cache, document_ids))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


# ---------------------------------------------------------------- backbone


class LlamaBackbone(Backbone):
    """Token embedding, `num_layers` LlamaBlocks, final RMSNorm; positions are rotary only."""

    family = "llama"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        # one table for every block: max_seq_len x head_dim floats, not one per layer
        self.rotary = RotaryEmbedding(c.head_dim, c.max_seq_len, c.rope_base, c.rope())
        self.blocks = nn.ModuleList(LlamaBlock(c, self.rotary) for _ in range(c.num_layers))
        self.final_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.apply(init_normal)
        # GPT-2 paper, section 2.3: scale the weights of residual layers by 1/sqrt(N), N = the
        # 2 residual additions per block.
        residual_std = 0.02 / math.sqrt(2 * c.num_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.down.weight, mean=0.0, std=residual_std)

    def forward(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        cache: list[KVCache] | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids -> hidden (B, T, C).

        Args:
            padding_mask: (B, T) bool, True = real token (with a cache: (B, S) over all S keys).
                Rotary positions are relative, so a left-padded row reads as it would alone.
            cache: one KVCache per block; the tokens are appended after those already cached.
            document_ids: (B, T) packed rows: which example each token belongs to; attention
                never crosses examples and positions restart at each one.
        """
        T = token_ids.shape[1]
        start = cache[0].length if cache is not None else 0
        limit = self.config.max_seq_len
        if start + T > limit:
            raise ConfigError(
                f"{start} cached and {T} new tokens pass max_seq_len={limit}; crop the input, or "
                "start a new state with init_state() (generate() slides the window for you)"
            )
        x = self.embed(token_ids)  # (B, T, C)
        caches = cache if cache is not None else [None] * len(self.blocks)
        for block, layer_cache in zip(self.blocks, caches):
            x = block(x, padding_mask, layer_cache, document_ids)
        return self.final_norm(x)

    def forward_slots(self, token_ids: Tensor, batch: SlotBatch) -> Tensor:
        """Packed ids (1, N) of an engine's rows -> hidden (1, N, C); each token sits at its
        batch.positions of its own slot (the engine keeps them below max_seq_len)."""
        x = self.embed(token_ids)
        # A decode step (one group of rows, one new token each) runs every block in one kernel
        # call where it can (layers/layout.py: stack_step).
        group = batch.groups[0] if len(batch.groups) == 1 else None
        if group is not None and group.shape[1] == 1:
            y = stack_step(self.blocks, x[0], batch.caches, group, decode_params)
            if y is not None:
                return self.final_norm(y[None])
        for i, block in enumerate(self.blocks):
            x = block(x, None, batch.layer(i))
        return self.final_norm(x)


def decode_params(block: nn.Module, n: int) -> tuple | None:
    """For a LlamaBlock and decode steps of n rows: (its 20 parameters in the fused kernel's
    order, its switches), as layers/layout.py's stack_step takes them; None where the kernel
    cannot run it (training, hooks, captured attention, linear layers outside the kernels)."""
    if type(block) is not LlamaBlock or block.training or not 1 <= n <= MAX_ROWS:
        return None
    parts = block._modules
    attn, ffn, norm1, norm2 = parts["attn"], parts["ffn"], parts["attn_norm"], parts["ffn_norm"]
    inner = attn._modules
    q_norm, k_norm, rotary = inner.get("q_norm"), inner.get("k_norm"), inner.get("rotary")
    if (
        attn.capture_probs
        or hooked(block, attn)
        or rotary is None
        or type(norm1) is not nn.RMSNorm
        or type(norm2) is not nn.RMSNorm
        or norm1.eps is None
        or norm1.eps != norm2.eps
        or (q_norm is not None and (q_norm.eps is None or q_norm.eps != k_norm.eps))
    ):
        return None
    path = int8_path(inner["qkv"], n)
    mlp = ffn._modules
    linears = [
        linear_params(m, path) for m in (inner["qkv"], inner["out"], mlp["gate_up"], mlp["down"])
    ]
    if None in linears:
        return None
    (qkv_p, out_p, up_p, down_p) = linears
    norms = (None, None) if q_norm is None else (q_norm.weight, k_norm.weight)
    tables = rotary._buffers["cos"], rotary._buffers["sin"]
    params = (norm1.weight, None, *qkv_p, *norms, *out_p, norm2.weight, None, *up_p, *down_p)
    window = attn.sliding_window or 0
    qk_eps = 0.0 if q_norm is None else q_norm.eps
    return (*params, *tables), (
        attn.num_heads,
        attn.num_kv_heads,
        norm1.eps,
        3,
        True,
        window,
        qk_eps,
    )


# ---------------------------------------------------------------- tasks


class LlamaCausalLM(TransformerLM):
    """Llama backbone + LM head (tied to the token embedding when config.tie_embeddings).

    Example:
        model = LlamaCausalLM(LlamaConfig(vocab_size=100))
        logits = model(torch.randint(0, 100, (2, 16)))              # (2, 16, 100)
        ids = next(model.generate([1, 2, 3], max_new_tokens=5, seed=0))
    """

    family = "llama"

    def __init__(self, backbone: LlamaBackbone | LlamaConfig, preprocessor=None):
        if isinstance(backbone, LlamaConfig):
            backbone = LlamaBackbone(backbone)
        super().__init__(backbone, preprocessor)
        c = self.config
        tied = backbone.embed if c.tie_embeddings else None
        self.head = LMHead(c.embed_dim, c.vocab_size, tied_to=tied)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.backbone.embed


# ---------------------------------------------------------------- presets

# The fine-tuning recipe --init-from starts from for the pretrained checkpoints: AdamW at a low
# learning rate, as the gpt2 preset (the Hugging Face course's ELI5 recipe).
_FINE_TUNE = dict(
    batch_size=8, block_size=128, lr=2e-5, warmup_steps=0, weight_decay=0.01, dropout=0.0, epochs=3
)

PRESETS = {
    "llama-shakespeare": dict(
        # gpt-shakespeare's shape and recipe (4 x 128, context 128, Muon at 5e-3 on a cosine
        # that ends at the 10-minute budget; its 6 x 192 candidate at context 256) with Llama's
        # blocks: RMSNorm, SwiGLU at 2/3 of GPT's 4x width (the same parameters per block, LLaMA
        # paper section 2), rotary positions.
        config=dict(
            vocab_size=65,
            max_seq_len=128,
            embed_dim=128,
            num_heads=4,
            num_kv_heads=4,
            num_layers=4,
            ffn_dim=352,
            tie_embeddings=True,
        ),
        tokenizer="char",
        about="4 x 128 Llama-style decoder (RMSNorm, SwiGLU, rotary): Shakespeare in 10 CPU min",
        # gpt-shakespeare's candidate sizes, SwiGLU at 2/3 of the 4x width (budget.py picks)
        candidates=[
            dict(num_layers=4, embed_dim=128, num_heads=4, num_kv_heads=4, ffn_dim=352),
            dict(
                num_layers=6,
                embed_dim=192,
                num_heads=6,
                num_kv_heads=6,
                ffn_dim=512,
                max_seq_len=256,  # and batch 6: gpt-shakespeare's _SHAPE_6X192_LONG
                batch_size=6,
            ),
        ],
        train=dict(
            optimizer="muon",
            batch_size=12,
            block_size=128,
            lr=5e-3,
            min_lr=1e-4,
            warmup_steps=100,
            max_time="10m",
            weight_decay=0.1,
            beta2=0.99,
            grad_clip=1.0,
            dropout=0.0,
            eval_every=1500,
        ),
    ),
    # Shapes from each repository's config.json.
    "smollm2-135m": dict(
        config=dict(
            vocab_size=49152,
            max_seq_len=8192,
            embed_dim=576,
            num_heads=9,
            num_kv_heads=3,
            num_layers=30,
            ffn_dim=1536,
            tie_embeddings=True,
            norm_eps=1e-5,
            rope_base=100000.0,
        ),
        tokenizer="bpe",
        hf_repo="HuggingFaceTB/SmolLM2-135M",
        about="SmolLM2-135M: 30 x 576 Llama, 9 query / 3 key-value heads, context 8192",
        train=_FINE_TUNE,
    ),
    "qwen2.5-0.5b": dict(
        config=dict(
            vocab_size=151936,
            max_seq_len=32768,
            embed_dim=896,
            num_heads=14,
            num_kv_heads=2,
            num_layers=24,
            ffn_dim=4864,
            tie_embeddings=True,
            qkv_bias=True,
            norm_eps=1e-6,
            rope_base=1000000.0,
        ),
        tokenizer="bpe",
        hf_repo="Qwen/Qwen2.5-0.5B",
        about="Qwen2.5-0.5B: 24 x 896, 14 query / 2 key-value heads with q/k/v biases, context 32k",
        train=_FINE_TUNE,
    ),
    "qwen3-0.6b": dict(
        config=dict(
            vocab_size=151936,
            max_seq_len=40960,
            embed_dim=1024,
            num_heads=16,
            num_kv_heads=8,
            head_dim=128,
            num_layers=28,
            ffn_dim=3072,
            tie_embeddings=True,
            qk_norm=True,
            norm_eps=1e-6,
            rope_base=1000000.0,
        ),
        tokenizer="bpe",
        hf_repo="Qwen/Qwen3-0.6B",
        about="Qwen3-0.6B: 28 x 1024, 16 query / 8 key-value heads of 128, q/k norms, context 40k",
        train=_FINE_TUNE,
    ),
    "tinyllama-1.1b": dict(
        config=dict(
            vocab_size=32000,
            max_seq_len=2048,
            embed_dim=2048,
            num_heads=32,
            num_kv_heads=4,
            num_layers=22,
            ffn_dim=5632,
            tie_embeddings=False,
            norm_eps=1e-5,
            rope_base=10000.0,
        ),
        tokenizer="bpe",
        hf_repo="TinyLlama/TinyLlama_v1.1",
        about="TinyLlama 1.1B: 22 x 2048 Llama 2, 32 query / 4 key-value heads, context 2048",
        train=_FINE_TUNE,
    ),
}

# ---------------------------------------------------------------- Hugging Face names

# Keyed by the Hugging Face `model_type`; interop/hf.py applies the tables (its docstring says
# what each entry means). "{i}" stands for the block index. The four layouts are one model: they
# differ in which of our switches they fix. `rope=True`: the rotary fields (rope_base and
# rope_scaling with its arguments) are read from rope_theta/rope_scaling or from the newer
# rope_parameters, and both forms are written.
_LAYER = "model.layers.{i}."
_ATTN = _LAYER + "self_attn."
_QKV = "backbone.blocks.{i}.attn.qkv."
_WEIGHTS = {
    "backbone.embed.weight": "model.embed_tokens.weight",
    "backbone.blocks.{i}.attn_norm.weight": _LAYER + "input_layernorm.weight",
    _QKV + "weight": tuple(_ATTN + f"{x}_proj.weight" for x in "qkv"),
    "backbone.blocks.{i}.attn.out.weight": _ATTN + "o_proj.weight",
    "backbone.blocks.{i}.ffn_norm.weight": _LAYER + "post_attention_layernorm.weight",
    "backbone.blocks.{i}.ffn.gate_up.weight": tuple(
        _LAYER + f"mlp.{x}_proj.weight" for x in ("gate", "up")
    ),
    "backbone.blocks.{i}.ffn.down.weight": _LAYER + "mlp.down_proj.weight",
    "backbone.final_norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",
}
_QKV_BIAS = {_QKV + "bias": tuple(_ATTN + f"{x}_proj.bias" for x in "qkv")}
_QK_NORM = {
    "backbone.blocks.{i}.attn.q_norm.weight": _ATTN + "q_norm.weight",
    "backbone.blocks.{i}.attn.k_norm.weight": _ATTN + "k_norm.weight",
}
_CONFIG = {
    "vocab_size": "vocab_size",
    "max_seq_len": "max_position_embeddings",
    "embed_dim": "hidden_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",  # None there: as many as num_attention_heads
    "head_dim": "head_dim",  # None or absent: hidden_size // num_attention_heads
    "num_layers": "num_hidden_layers",
    "ffn_dim": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "dropout": "attention_dropout",
}
_SHARED = dict(
    rope=True,
    # their config classes' defaults (LlamaConfig's), for a config.json that leaves one out
    defaults=dict(
        vocab_size=32000,
        max_position_embeddings=2048,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        num_hidden_layers=32,
        intermediate_size=11008,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    ),
    base_prefix="model.",
    split={
        _QKV + "weight": ("num_heads", "num_kv_heads", "num_kv_heads"),
        _QKV + "bias": ("num_heads", "num_kv_heads", "num_kv_heads"),
    },
    tied={"head.weight": "backbone.embed.weight"},
    ignored=("rotary_emb.inv_freq",),  # a buffer older Llama checkpoints store
    why=dict(
        qkv_bias="only Qwen2 has q/k/v biases",
        qk_norm="only Qwen3 norms queries and keys",
        sliding_window="only Mistral has a sliding window",
    ),
    fits="train a llama preset (e.g. --preset llama-shakespeare)",
    token_ids={"bos_token_id": ("bos", "eos"), "eos_token_id": ("eos",)},
    written=dict(dtype="float32"),
)
HF_NAMES = {
    "llama": dict(
        _SHARED,
        config=_CONFIG,
        # attention_bias there biases q, k, v and o alike; mlp_bias the feed-forward
        requires=dict(hidden_act="silu", attention_bias=False, mlp_bias=False),
        fixed=dict(qkv_bias=False, qk_norm=False, sliding_window=None),
        architecture="LlamaForCausalLM",
        tasks={"LlamaForCausalLM": "LlamaCausalLM"},
        weights=_WEIGHTS,
    ),
    "mistral": dict(
        _SHARED,
        config={**_CONFIG, "sliding_window": "sliding_window"},
        requires=dict(hidden_act="silu"),
        fixed=dict(qkv_bias=False, qk_norm=False),
        architecture="MistralForCausalLM",
        tasks={"MistralForCausalLM": "LlamaCausalLM"},
        weights=_WEIGHTS,
    ),
    "qwen2": dict(
        _SHARED,
        config=_CONFIG,
        # use_sliding_window=True windows only the layers past max_window_layers
        requires=dict(hidden_act="silu", use_sliding_window=False),
        fixed=dict(qkv_bias=True, qk_norm=False, sliding_window=None),
        exports_too=dict(qkv_bias=False),  # no biases are zero biases
        architecture="Qwen2ForCausalLM",
        tasks={"Qwen2ForCausalLM": "LlamaCausalLM"},
        weights={**_WEIGHTS, **_QKV_BIAS},
    ),
    "qwen3": dict(
        _SHARED,
        config=_CONFIG,
        requires=dict(hidden_act="silu", use_sliding_window=False, attention_bias=False),
        fixed=dict(qkv_bias=False, qk_norm=True, sliding_window=None),
        architecture="Qwen3ForCausalLM",
        tasks={"Qwen3ForCausalLM": "LlamaCausalLM"},
        weights={**_WEIGHTS, **_QK_NORM},
    ),
}
