"""Decoder-only transformers, from the one-block post-norm GPT of the Keras tutorial to GPT-2.

One architecture told apart by config switches (norm_first, activation, position, tie_embeddings,
use_bias); GPT-2 checkpoints load into it through HF_NAMES. Module names are lmforge's own: rename
one and update HF_NAMES in the same change.
"""

import math
from dataclasses import dataclass, field

import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import (
    KVCache,
    SlotBatch,
    document_positions,
)
from lmforge.layers.embeddings import TokenPositionEmbedding
from lmforge.layers.heads import LMHead
from lmforge.layers.layout import block_step, stack_step
from lmforge.layers.transformer import ACTIVATIONS, TransformerBlock
from lmforge.models.base import Backbone, TransformerLM, check_config, init_normal

# ---------------------------------------------------------------- config

POSITIONS = ("learned", "sinusoidal", "rotary")


@dataclass
class GPTConfig:
    """Shape and switches of a GPT; the defaults are a tiny model that trains in seconds on a CPU.

    activation: "relu", "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation GPT-2 calls
    "gelu_new"). position: "learned" table, fixed "sinusoidal" table, or "rotary" (RoPE inside
    attention, nothing added to the embedding). head_dim None means embed_dim // num_heads.
    use_bias covers every Linear and LayerNorm; the LM head has a bias only when it is not tied.
    canon: pre-norm only: the width of a Canon layer (a causal depthwise convolution with a
    residual, layers/canon.py) before each block's attention and feed-forward; 0: none.
    dropout is used on the embeddings, the residual branches and the attention probabilities;
    attention_dropout, when set, replaces it on the probabilities alone (0 keeps SDPA's fused
    kernel while training: on a CPU, dropout inside attention costs a third of a 6 x 192 step).
    """

    vocab_size: int = 256
    max_seq_len: int = 64
    embed_dim: int = 64
    num_heads: int = 4
    head_dim: int | None = None
    num_layers: int = 2
    ffn_dim: int = 256
    dropout: float = 0.0
    attention_dropout: float | None = None
    norm_first: bool = True
    activation: str = "gelu"
    position: str = "learned"
    tie_embeddings: bool = True
    use_bias: bool = True
    layer_norm_eps: float = 1e-5
    canon: int = field(
        default=0,
        metadata={
            "help": "width of the Canon layers before each block's attention and feed-forward "
            "(a causal depthwise convolution over the last N positions; GPT only); 0: none"
        },
    )

    def __post_init__(self):
        check_config(
            self,
            ("vocab_size", "max_seq_len", "embed_dim", "num_heads", "num_layers", "ffn_dim"),
            {"activation": ACTIVATIONS, "position": POSITIONS},
        )
        if self.head_dim is None:
            if self.embed_dim % self.num_heads:
                raise ConfigError(
                    f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                    "change one of them or set head_dim"
                )
        elif not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ConfigError(f"head_dim={self.head_dim!r} must be a positive integer or None")
        if self.position == "rotary" and (self.head_dim or self.embed_dim // self.num_heads) % 2:
            raise ConfigError(
                "rotary positions need an even head_dim; change embed_dim, num_heads or head_dim"
            )
        if not isinstance(self.canon, int) or self.canon < 0 or self.canon == 1:
            raise ConfigError(
                f"canon={self.canon!r} must be 0 (none) or a width of 2 or more (e.g. 4)"
            )
        if self.canon and not self.norm_first:
            raise ConfigError("canon layers need pre-norm blocks: set norm_first or canon=0")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps} must be > 0 (GPT-2: 1e-5)")


# ---------------------------------------------------------------- backbone


class GPTBackbone(Backbone):
    """Token (+ position) embedding, `num_layers` causal TransformerBlocks, final LayerNorm.

    The final LayerNorm exists only when norm_first (GPT-2); post-norm blocks end normalised.
    """

    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        rotary = c.position == "rotary"
        self.embed = TokenPositionEmbedding(
            c.vocab_size, c.embed_dim, c.max_seq_len, "none" if rotary else c.position, c.dropout
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                c.embed_dim,
                c.num_heads,
                c.ffn_dim,
                head_dim=c.head_dim,
                dropout=c.dropout,
                attention_dropout=c.attention_dropout,
                activation=c.activation,
                norm_first=c.norm_first,
                is_causal=True,
                use_bias=c.use_bias,
                layer_norm_eps=c.layer_norm_eps,
                rotary=rotary,
                max_seq_len=c.max_seq_len,
                canon=c.canon,
            )
            for _ in range(c.num_layers)
        )
        self.final_norm = (
            nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps, bias=c.use_bias)
            if c.norm_first
            else None
        )
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
                Learned and sinusoidal positions then count real tokens only.
            cache: one KVCache per block; the tokens are appended after those already cached.
            document_ids: (B, T) packed rows: which example each token belongs to; attention
                never crosses examples and positions restart at each one.
        """
        T = token_ids.shape[1]
        start = cache[0].length if cache is not None else 0
        limit = self.config.max_seq_len
        if start + T > limit:
            if cache is not None:
                raise ConfigError(
                    f"the state holds {start} tokens and {T} more would pass max_seq_len={limit}; "
                    "start a new state with init_state() (generate() slides the window for you)"
                )
            raise ConfigError(
                f"got {T} tokens but max_seq_len={limit}; crop the input to at most {limit} tokens"
            )
        position_ids = None
        if padding_mask is not None and self.embed.position_kind != "none":
            # Positions count real tokens only, so a left-padded row reads as it would alone
            # (rotary needs nothing: it depends on relative positions). (B, S) -> (B, T)
            position_ids = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        if document_ids is not None and self.embed.position_kind != "none":
            position_ids = document_positions(document_ids)  # restart at 0 in each example
        x = self.embed(token_ids, start, position_ids)  # (B, T, C)
        if cache is None:
            for block in self.blocks:
                x = block(x, padding_mask, document_ids=document_ids)
        else:
            for block, layer_cache in zip(self.blocks, cache):
                x = block(x, padding_mask, layer_cache)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward_slots(self, token_ids: Tensor, batch: SlotBatch) -> Tensor:
        """Packed ids (1, N) of an engine's rows -> hidden (1, N, C); each token sits at its
        batch.positions of its own slot (the engine keeps them below max_seq_len)."""
        x = self.embed(token_ids, 0, batch.positions)  # rotary: positions go to attention
        # A decode step (one group of rows, one new token each) runs every block in one kernel
        # call where it can (layers/layout.py: stack_step), else each block in one call where
        # that block can (block_step).
        group = batch.groups[0] if len(batch.groups) == 1 else None
        rows = group if group is not None and group.shape[1] == 1 else None
        y = None if rows is None else stack_step(self.blocks, x[0], batch.caches, rows)
        if y is not None:
            x = y[None]
        else:
            for i, block in enumerate(self.blocks):
                y = None if rows is None else block_step(block, x[0], batch.caches[i], rows)
                x = block(x, None, batch.layer(i)) if y is None else y[None]
        return self.final_norm(x) if self.final_norm is not None else x


# ---------------------------------------------------------------- tasks


class GPTCausalLM(TransformerLM):
    """GPT backbone + LM head (tied to the token embedding when config.tie_embeddings).

    Example:
        model = GPTCausalLM(GPTConfig(vocab_size=100))
        logits = model(torch.randint(0, 100, (2, 16)))              # (2, 16, 100)
        ids = next(model.generate([1, 2, 3], max_new_tokens=5, seed=0))
    """

    family = "gpt"

    def __init__(self, backbone: GPTBackbone | GPTConfig, preprocessor=None):
        if isinstance(backbone, GPTConfig):
            backbone = GPTBackbone(backbone)
        super().__init__(backbone, preprocessor)
        c = self.config
        self.head = LMHead(
            c.embed_dim,
            c.vocab_size,
            use_bias=c.use_bias and not c.tie_embeddings,
            tied_to=backbone.embed.token if c.tie_embeddings else None,
        )

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.backbone.embed.token


# ---------------------------------------------------------------- presets

# Sizes a budgeted preset picks among (its `candidates`), by the tokens its budget buys:
# README "Budget-aware recipes" has what each reaches at several token budgets.
_SHAPE_4X128 = dict(num_layers=4, embed_dim=128, num_heads=4, ffn_dim=512)
_SHAPE_6X192 = dict(num_layers=6, embed_dim=192, num_heads=6, ffn_dim=768)
# 6 x 192 reading context 256 at batch 6 (the same tokens per step as 12 x 128): once the budget
# recipe's weight decay holds off overfitting, the longer context pays for this size. 10 minutes
# on an AMX Xeon (compiled, decay 0.5): gpt-shakespeare 1.449 at context 128 -> 1.426 and 1.439
# at 256; llama-shakespeare 1.4515 -> 1.433 and 1.437 (with the old 0.1 decay it had bought
# nothing: 1.480 -> 1.476). Not 4 x 128: steps-matched at 5.9M tokens it reached 1.464 at 256
# against 1.462 at 128, on steps ~1.35x slower (eager).
_LONG = dict(max_seq_len=256, batch_size=6)
_SHAPE_6X192_LONG = {**_SHAPE_6X192, **_LONG}
# 8 x 256 at context 256, for budgets that feed it a token per parameter (6.3M): 30 minutes on an
# AMX Xeon (bf16, which --precision auto picks at this width; compiled, dropout 0.1 on the
# residual branches, decay 0.5) reached 1.416 with 8.7M tokens, best at the end, where 6 x 192
# made 1.429 with dropout (12.4M tokens) and 1.453 without (15.6M, memorising: last 1.490).
# With lmforge's compiled CPU dropout and attention backward (session 15) it reads ~12M tokens
# in those 30 minutes: 1.395, 1.406, 1.410, 1.416, 1.407 (sessions 15-17; 1.397 and 1.409 with
# dropout 0.15 and 0.2, 1.422 at lr 3e-3, 1.401 untied): at the 1.40 line, not reliably under it.
# At context 512 and batch 3 (the same tokens per step) it made 1.398 with only 7.5M tokens (4.2k
# tok/s with torch's attention backward past 256; train 1.15, less memorised), where context 256
# took 12-14M for 1.395-1.416: the longer context is worth more than the tokens it costs
# (session 19; lmforge/layers/cpu_attention.py's backward now covers 512). The plain 30-minute
# command then made 1.3999 (7.9M tokens) and 1.391 (9.45M).
_LONGER = dict(max_seq_len=512, batch_size=3)
_SHAPE_8X256_LONGER = dict(num_layers=8, embed_dim=256, num_heads=8, ffn_dim=1024, **_LONGER)
# gpt-shakespeare's Canon layers (its canon=4) stay on 4 x 128, where steps-matched they gain
# (1.462 -> 1.454 at 5.9M tokens) and a compiled step costs the same. The larger candidates
# leave them out: with them, 10 minutes of 6 x 192 reached 1.441 (without: 1.422-1.439) and 30
# minutes of 8 x 256 1.411 (13.4M tokens; without: 1.395-1.416), ahead early (1.646 against
# 1.707 at step 1,500) but level from step 4,500 on, with a lower training loss (session 18).
_NO_CANON = dict(canon=0)

PRESETS = {
    "gpt-tiny-wine": dict(
        config=dict(
            vocab_size=10000,
            max_seq_len=80,
            embed_dim=256,
            num_heads=2,
            head_dim=256,
            num_layers=1,
            ffn_dim=256,
            norm_first=False,
            activation="relu",
            position="learned",
            tie_embeddings=False,
            use_bias=True,
        ),
        tokenizer="word",
        about="one post-norm block (2 heads of 256, ReLU), the Keras GPT for short wine reviews",
        # Keras tutorial: Adam at its default 1e-3, batch 32, 5 epochs, dropout 0.1.
        train=dict(
            batch_size=32,
            block_size=80,
            lr=1e-3,
            warmup_steps=0,
            weight_decay=0.0,
            dropout=0.1,
            epochs=5,
        ),
    ),
    "gpt-baby": dict(
        config=dict(
            vocab_size=65,
            max_seq_len=64,
            embed_dim=128,
            num_heads=4,
            num_layers=4,
            ffn_dim=512,
            norm_first=True,
            activation="gelu",
            position="learned",
            tie_embeddings=True,
            use_bias=False,
        ),
        tokenizer="char",
        about="4 x 128 pre-norm GPT, context 64: nanoGPT's 'baby' CPU shape for characters",
        # What a --max-time / --max-tokens budget picks among (lmforge/training/budget.py).
        candidates=[_SHAPE_4X128, _SHAPE_6X192],
        # nanoGPT README's CPU run on Shakespeare characters, with Muon and a higher peak LR: on
        # a 2-core AVX2 CPU, --max-time 90s reached val 2.131 with AdamW at lr 1e-3 (warmup 100),
        # 1.922 at 3e-3 (warmup 50), 1.936 at 6e-3; with Muon 1.866 at 3e-3, 1.786 at 6e-3,
        # 1.779 at 1e-2 (and 1.899 at batch 24, 3e-3).
        train=dict(
            optimizer="muon",
            batch_size=12,
            block_size=64,
            lr=8e-3,
            min_lr=1e-4,
            warmup_steps=50,
            max_steps=2000,
            weight_decay=0.1,
            beta2=0.99,
            grad_clip=1.0,
            dropout=0.0,
        ),
    ),
    "gpt-shakespeare": dict(
        # Sized for a 10-minute budget on a 2-core AVX2 CPU (~9.5k tokens/s, ~5.7M tokens): the
        # baby width with rotary positions and context 128, small batches (more updates per
        # token) and a high peak LR on a cosine that ends exactly at the budget. Measured on
        # that machine: 4 x 192 at batch 32 -> 1.607 val; 4 x 128 at batch 16 -> 1.559; this
        # (batch 12, lr 2.5e-3) -> 1.543. Muon for the block matrices then gave 1.491 at lr
        # 2.5e-3 and 1.480 at 5e-3 (this); dropout 0.1 cost a third of the steps (1.579).
        # torch.compile bought nothing at this size there. The 6 x 192 and 8 x 256 candidates
        # read context 256 and 512 (_SHAPE_6X192_LONG, _SHAPE_8X256_LONGER). Canon layers of width 4
        # (session 18, steps-matched on 4 x 128 with decay 0.5): 1.522 -> 1.499 at 3M tokens,
        # 1.462 -> 1.454 at 5.9M (seed 7: 1.485 -> 1.463); embedding smearing (1.515), x0
        # skips (1.516), value residuals (1.523), a 3x embedding LR (1.526) and logit
        # soft-capping (1.520) did less, and smearing on top of Canon nothing (1.498).
        config=dict(
            vocab_size=65,
            max_seq_len=128,
            embed_dim=128,
            num_heads=4,
            num_layers=4,
            ffn_dim=512,
            norm_first=True,
            activation="gelu",
            position="rotary",
            tie_embeddings=True,
            use_bias=False,
            canon=4,
        ),
        tokenizer="char",
        about="4 x 128 pre-norm GPT, rotary positions, Canon layers, context 128: Shakespeare in "
        "10 CPU minutes",
        candidates=[
            _SHAPE_4X128,
            {**_SHAPE_6X192_LONG, **_NO_CANON},
            {**_SHAPE_8X256_LONGER, **_NO_CANON},
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
    "gpt2": dict(
        config=dict(
            vocab_size=50257,
            max_seq_len=1024,
            embed_dim=768,
            num_heads=12,
            num_layers=12,
            ffn_dim=3072,
            norm_first=True,
            activation="gelu_tanh",
            position="learned",
            tie_embeddings=True,
            use_bias=True,
            layer_norm_eps=1e-5,
        ),
        tokenizer="bpe",
        hf_repo="openai-community/gpt2",
        about="GPT-2 small (124M): 12 x 768 pre-norm, context 1024, byte-level BPE",
        # The ELI5 fine-tuning recipe of the Hugging Face course: AdamW 2e-5, weight decay 0.01.
        train=dict(
            batch_size=8,
            block_size=128,
            lr=2e-5,
            warmup_steps=0,
            weight_decay=0.01,
            dropout=0.1,
            epochs=3,
        ),
    ),
    "distilgpt2": dict(
        config=dict(
            vocab_size=50257,
            max_seq_len=1024,
            embed_dim=768,
            num_heads=12,
            num_layers=6,
            ffn_dim=3072,
            norm_first=True,
            activation="gelu_tanh",
            position="learned",
            tie_embeddings=True,
            use_bias=True,
            layer_norm_eps=1e-5,
        ),
        tokenizer="bpe",
        hf_repo="distilbert/distilgpt2",
        about="DistilGPT2 (82M): GPT-2 small with 6 layers, byte-level BPE",
        train=dict(
            batch_size=8,
            block_size=128,
            lr=2e-5,
            warmup_steps=0,
            weight_decay=0.01,
            dropout=0.1,
            epochs=3,
        ),
    ),
}

# ---------------------------------------------------------------- Hugging Face names

_NEOX = "gpt_neox.layers.{i}."  # a GPT-NeoX block's weights

# Keyed by the Hugging Face `model_type`. "{i}" stands for the block index. Checkpoints saved from
# GPT2Model (the hub's gpt2 weights) lack the "transformer." prefix; tied checkpoints may lack
# "lm_head.weight"; the "attn.bias" / "attn.masked_bias" buffers of old checkpoints are unused.
HF_NAMES = {
    "gpt2": dict(
        config={
            "vocab_size": "vocab_size",
            "max_seq_len": "n_positions",
            "embed_dim": "n_embd",
            "num_heads": "n_head",
            "num_layers": "n_layer",
            "ffn_dim": "n_inner",  # None there means 4 * n_embd
            "activation": "activation_function",
            "layer_norm_eps": "layer_norm_epsilon",
            "dropout": "resid_pdrop",  # GPT-2 also has embd_pdrop and attn_pdrop, all 0.1
        },
        activations={
            "gelu_new": "gelu_tanh",
            "gelu_pytorch_tanh": "gelu_tanh",
            "gelu_fast": "gelu_tanh",
            "gelu": "gelu",
            "relu": "relu",
        },
        fixed=dict(
            norm_first=True, position="learned", tie_embeddings=True, use_bias=True, canon=0
        ),
        # Other values of those switches that still export exactly: no biases are zero biases,
        # and a fixed sinusoidal table is a learned table that holds the sinusoids.
        exports_too=dict(use_bias=False, position="sinusoidal"),
        # What GPT-2's layout needs instead, per switch: one refusal lists every reason.
        why=dict(
            norm_first="GPT-2's blocks are pre-norm",
            position="GPT-2 adds a learned position table (rotary models export as gpt_neox)",
            tie_embeddings="GPT-2's LM head is the token embedding, with no bias",
            head_dim="GPT-2's heads split embed_dim (head_dim=None)",
            canon="GPT-2 has no Canon layers (train with --canon 0)",
        ),
        # GPT2Config's defaults, for a config.json that leaves a field out
        defaults=dict(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            n_inner=None,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            resid_pdrop=0.1,
        ),
        # Their switches that our GPT has no counterpart for, and the one value we support
        requires=dict(
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            add_cross_attention=False,
        ),  # tie_word_embeddings=False (an lm_head of its own) loads into an untied head
        fits="train one with GPT-2's switches (e.g. --preset gpt-baby)",
        architecture="GPT2LMHeadModel",
        tasks={"GPT2LMHeadModel": "GPTCausalLM"},
        base_prefix="transformer.",  # missing in checkpoints saved from GPT2Model
        weights={
            "backbone.embed.token.weight": "transformer.wte.weight",
            "backbone.embed.position.weight": "transformer.wpe.weight",
            "backbone.blocks.{i}.attn_norm.weight": "transformer.h.{i}.ln_1.weight",
            "backbone.blocks.{i}.attn_norm.bias": "transformer.h.{i}.ln_1.bias",
            "backbone.blocks.{i}.attn.qkv.weight": "transformer.h.{i}.attn.c_attn.weight",
            "backbone.blocks.{i}.attn.qkv.bias": "transformer.h.{i}.attn.c_attn.bias",
            "backbone.blocks.{i}.attn.out.weight": "transformer.h.{i}.attn.c_proj.weight",
            "backbone.blocks.{i}.attn.out.bias": "transformer.h.{i}.attn.c_proj.bias",
            "backbone.blocks.{i}.ffn_norm.weight": "transformer.h.{i}.ln_2.weight",
            "backbone.blocks.{i}.ffn_norm.bias": "transformer.h.{i}.ln_2.bias",
            "backbone.blocks.{i}.ffn.up.weight": "transformer.h.{i}.mlp.c_fc.weight",
            "backbone.blocks.{i}.ffn.up.bias": "transformer.h.{i}.mlp.c_fc.bias",
            "backbone.blocks.{i}.ffn.down.weight": "transformer.h.{i}.mlp.c_proj.weight",
            "backbone.blocks.{i}.ffn.down.bias": "transformer.h.{i}.mlp.c_proj.bias",
            "backbone.final_norm.weight": "transformer.ln_f.weight",
            "backbone.final_norm.bias": "transformer.ln_f.bias",
            "head.weight": "lm_head.weight",
        },
        # GPT-2's Conv1D stores weights as (in, out); nn.Linear wants (out, in).
        transpose=(
            "backbone.blocks.{i}.attn.qkv.weight",
            "backbone.blocks.{i}.attn.out.weight",
            "backbone.blocks.{i}.ffn.up.weight",
            "backbone.blocks.{i}.ffn.down.weight",
        ),
        tied={"head.weight": "backbone.embed.token.weight"},
        ignored=(".attn.bias", ".attn.masked_bias"),  # causal-mask buffers; we build our own
        token_ids={"bos_token_id": ("bos", "eos"), "eos_token_id": ("eos",)},
        written=dict(dtype="float32", tie_word_embeddings=True),
    ),
    # lmforge's rotary GPTs (gpt-shakespeare) leave as GPT-NeoX: pre-norm with sequential
    # residuals, rotate-half RoPE on whole heads; a model without biases exports zero ones.
    "gpt_neox": dict(
        config={
            "vocab_size": "vocab_size",
            "max_seq_len": "max_position_embeddings",
            "embed_dim": "hidden_size",
            "num_heads": "num_attention_heads",
            "num_layers": "num_hidden_layers",
            "ffn_dim": "intermediate_size",
            "activation": "hidden_act",
            "layer_norm_eps": "layer_norm_eps",
            "tie_embeddings": "tie_word_embeddings",
            "dropout": ("hidden_dropout", "attention_dropout"),
        },
        activations={
            "gelu": "gelu",
            "gelu_new": "gelu_tanh",
            "gelu_pytorch_tanh": "gelu_tanh",
            "relu": "relu",
        },
        rope=True,
        fixed=dict(norm_first=True, position="rotary", use_bias=True, canon=0),
        exports_too=dict(use_bias=False),
        why=dict(
            norm_first="GPT-NeoX's blocks are pre-norm",
            position="GPT-NeoX rotates q and k (learned positions export as gpt2)",
            use_bias="GPT-NeoX has biases",
            head_dim="GPT-NeoX's heads split hidden_size (head_dim=None)",
            canon="GPT-NeoX has no Canon layers (train with --canon 0)",
        ),
        # GPTNeoXConfig's defaults, for a config.json that leaves a field out
        defaults=dict(
            vocab_size=50432,
            max_position_embeddings=2048,
            hidden_size=6144,
            num_attention_heads=64,
            num_hidden_layers=44,
            intermediate_size=24576,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
        requires=dict(use_parallel_residual=False, attention_bias=True),
        fits="train a pre-norm rotary gpt (e.g. --preset gpt-shakespeare)",
        architecture="GPTNeoXForCausalLM",
        tasks={"GPTNeoXForCausalLM": "GPTCausalLM"},
        base_prefix="gpt_neox.",
        weights={
            "backbone.embed.token.weight": "gpt_neox.embed_in.weight",
            "backbone.blocks.{i}.attn_norm.weight": "gpt_neox.layers.{i}.input_layernorm.weight",
            "backbone.blocks.{i}.attn_norm.bias": "gpt_neox.layers.{i}.input_layernorm.bias",
            "backbone.blocks.{i}.attn.qkv.weight": _NEOX + "attention.query_key_value.weight",
            "backbone.blocks.{i}.attn.qkv.bias": _NEOX + "attention.query_key_value.bias",
            "backbone.blocks.{i}.attn.out.weight": _NEOX + "attention.dense.weight",
            "backbone.blocks.{i}.attn.out.bias": _NEOX + "attention.dense.bias",
            "backbone.blocks.{i}.ffn_norm.weight": _NEOX + "post_attention_layernorm.weight",
            "backbone.blocks.{i}.ffn_norm.bias": _NEOX + "post_attention_layernorm.bias",
            "backbone.blocks.{i}.ffn.up.weight": _NEOX + "mlp.dense_h_to_4h.weight",
            "backbone.blocks.{i}.ffn.up.bias": _NEOX + "mlp.dense_h_to_4h.bias",
            "backbone.blocks.{i}.ffn.down.weight": _NEOX + "mlp.dense_4h_to_h.weight",
            "backbone.blocks.{i}.ffn.down.bias": _NEOX + "mlp.dense_4h_to_h.bias",
            "backbone.final_norm.weight": "gpt_neox.final_layer_norm.weight",
            "backbone.final_norm.bias": "gpt_neox.final_layer_norm.bias",
            "head.weight": "lm_head.weight",
        },
        per_head=("backbone.blocks.{i}.attn.qkv.weight", "backbone.blocks.{i}.attn.qkv.bias"),
        optional=("head.bias",),  # their head has none: ours stays zero
        tied={"head.weight": "backbone.embed.token.weight"},
        renames={"embed_out.": "lm_head."},  # the head's name before transformers 4.50
        ignored=(".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq"),
        token_ids={"bos_token_id": ("bos", "eos"), "eos_token_id": ("eos",)},
        written=dict(dtype="float32", rotary_pct=1.0, rotary_emb_base=10000),
    ),
}
