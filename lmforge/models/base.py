"""What every backbone and task shares: a `family` name, a `config`, parameter counts.

`CausalLM` is the contract generation relies on: `init_state` and `step` only. The state is
whatever the family needs (a list of KV caches for transformers, (h, c) for an LSTM), so nothing
outside a family file may look inside it.
"""

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.attention import (
    KVCache,
    KVState,
    SlotBatch,
    SlotKVCache,
    slot_cache_bytes,
    slot_caches,
)
from lmforge.layers.canon import Canon


def check_config(config, positive: Sequence[str], choices: dict[str, Sequence[str]]) -> None:
    """The checks every family's config shares: sizes that must be positive integers, fields
    limited to a set of names, and dropout in [0, 1). One `ConfigError` line names the fix."""
    for name in positive:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer; set {name} >= 1")
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is unknown; use one of {', '.join(allowed)}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"dropout={config.dropout} is out of range; use a value in [0, 1)")


def init_normal(module: nn.Module) -> None:
    """GPT-2's and BERT's initialisation (use with `apply`): normal(0, 0.02) weights of linear
    and embedding layers, zero biases; LayerNorm keeps its (1, 0) default."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _count_params(module: nn.Module, trainable_only: bool) -> int:
    # parameters() yields a tied weight once, so tied embeddings are not counted twice.
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class Backbone(nn.Module):
    """Base of every backbone: token ids -> hidden states (B, T, C), built from `config` alone."""

    family: str = ""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (tied ones once); with trainable_only, those with requires_grad."""
        return _count_params(self, trainable_only)


class Task(nn.Module):
    """Base of every task: a backbone plus a head (and an optional preprocessor)."""

    family: str = ""

    def __init__(self, backbone: Backbone, preprocessor=None):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.preprocessor = preprocessor

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (tied ones once); with trainable_only, those with requires_grad."""
        return _count_params(self, trainable_only)

    def loss(self, batch: dict) -> Tensor:
        """The scalar that training minimises for this batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(batch)")


class CausalLM(Task):
    """A task that predicts the next token and can decode one step at a time.

    Subclasses implement `init_state` and `step`; `generate` works from those two alone. A
    family that also has the slot methods (`slot_bytes`, `init_slots`, `step_slots`,
    `copy_slots`; TransformerLM and the char RNN) decodes on the Engine instead, beam search
    included.
    """

    def init_state(self, batch_size: int, device: torch.device | None = None):
        """A fresh decoding state for `batch_size` rows (nothing seen yet)."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_state(batch_size)")

    def step(self, token_ids: Tensor, state) -> tuple[Tensor, object]:
        """Feed (B, t) more tokens: returns logits (B, t, V) and the state that includes them."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(token_ids, state)")

    def generate(
        self,
        prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
        max_new_tokens: int,
        **sampling,
    ) -> Iterator[Tensor]:
        """Yield the (B,) next token ids step by step; see `lmforge.generation.generate.generate`.

        Example:
            for ids in model.generate([[5, 17, 3]], max_new_tokens=20, temperature=0.8, seed=0):
                print(ids.tolist())
        """
        from lmforge.generation.generate import generate

        return generate(self, prompt_ids, max_new_tokens, **sampling)


class TransformerLM(CausalLM):
    """A decoder-only transformer task (GPT, Llama): backbone + `head` (an LMHead), with a KV
    cache per block for generate() and an engine's slot caches (lmforge.generation.engine).
    The backbone takes (ids, mask, cache=, document_ids=) and has `blocks` (each with `attn`)
    and `forward_slots(packed ids (1, N), SlotBatch) -> hidden (1, N, C)`; a subclass builds
    both and names its `token_embedding` (the weights a tied head shares).
    """

    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError(f"{type(self).__name__} must name its token_embedding")

    def forward(
        self,
        token_ids: Tensor,
        padding_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor:
        """(B, T) ids -> logits (B, T, V); `document_ids` (B, T) marks packed examples."""
        hidden = self.backbone(token_ids, padding_mask, document_ids=document_ids)
        return self.head(hidden)  # (B, T, V)

    def loss(self, batch: dict) -> Tensor:
        """Mean cross-entropy in float32 over labels != -100.

        Args:
            batch: "token_ids" (B, T) long, "labels" (B, T) long already shifted (labels[:, t]
                is the target after position t), optional "padding_mask" (B, T) bool, optional
                "document_ids" (B, T) (packed examples).
        """
        logits = self(batch["token_ids"], batch.get("padding_mask"), batch.get("document_ids"))
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
        )

    def init_state(self, batch_size: int, device: torch.device | None = None) -> KVState:
        """One empty KVCache of max_seq_len positions per block (allocated on the first step,
        at key/value-head size)."""
        return KVState([KVCache(self.config.max_seq_len) for _ in self.backbone.blocks])

    def step(
        self, token_ids: Tensor, state: KVState, padding_mask: Tensor | None = None
    ) -> tuple[Tensor, KVState]:
        """Feed (B, t) tokens after those in `state`: logits (B, t, V); the caches grow in place.

        Args:
            padding_mask: (B, t) bool for the new tokens, True = real (left padding: a row's
                pads come before its prompt). The state remembers it for later steps.
        """
        mask = state.extend_mask(padding_mask, token_ids)  # (B, S) or None
        return self.head(self.backbone(token_ids, mask, cache=state.caches)), state

    # An engine's slots: a cache allocated once, rows at their own positions. slot_bytes ->
    # init_slots once -> step_slots / step_slot_groups at every step (copy_slots: beam search).
    # Slots side by side are read as a view; a token fed at a slot's next position changes
    # nothing it will read.
    slot_span_is_a_view = True

    def slot_bytes(self, slots: int, max_len: int) -> int:
        """Bytes of the KV cache that init_slots(slots, max_len) allocates."""
        itemsize = self.token_embedding.weight.element_size()
        kv = slot_cache_bytes([b.attn for b in self.backbone.blocks], slots, max_len, itemsize)
        canon = sum(c.weight.shape[1] for c in self._canons())
        return kv + canon * slots * max_len * itemsize

    def init_slots(self, slots: int, max_len: int, device=None) -> list[SlotKVCache]:
        """One SlotKVCache of (slots, KV heads, max_len, D) per block, in the embedding's dtype
        (not the head's: int8 once quantized)."""
        weight = self.token_embedding.weight
        attns = [b.attn for b in self.backbone.blocks]
        caches = slot_caches(attns, slots, max_len, weight.dtype, device or weight.device)
        for block, cache in zip(self.backbone.blocks, caches):
            for canon in self._canons(block):  # its inputs at every position of every slot
                dim = canon.weight.shape[1]
                cache.canon[canon.name] = cache.k.new_zeros(slots, max_len, dim)
        return caches

    def _canons(self, block=None) -> list:
        """The Canon layers (layers/canon.py) of `block`, or of every block when None."""
        blocks = self.backbone.blocks if block is None else [block]
        return [m for b in blocks for m in b.modules() if isinstance(m, Canon)]

    def step_slots(self, token_ids: Tensor, caches: list, rows: list[int], starts: list[int]):
        """Feed (n, T) tokens, row i into slot rows[i] from position starts[i] on (what came
        before in that slot stays, what comes after is forgotten): logits (n, T, V)."""
        n, T = token_ids.shape
        batch = SlotBatch(caches, [(rows, starts, T)], token_ids.device)
        return self.head(
            self.backbone.forward_slots(token_ids.reshape(1, -1), batch).view(n, T, -1)
        )

    def copy_slots(
        self, caches: list, src_rows: list[int], dst_rows: list[int], length: int | None = None
    ) -> None:
        """Slot dst_rows[i] takes slot src_rows[i]'s keys and values at positions 0 .. length - 1
        (every position when None), in place: beam search's reorder. No slot may be both."""
        for cache in caches:
            for t in (cache.k, cache.v):  # (slots, KV, max_len, D)
                t[dst_rows, :, :length] = t[src_rows, :, :length]
            for t in cache.canon.values():  # (slots, max_len, C)
                t[dst_rows, :length] = t[src_rows, :length]

    def step_slot_groups(self, groups: list[tuple[Tensor, list[int], list[int]]], caches: list):
        """One forward of several step_slots calls' rows, given as (token_ids (n, T), rows,
        starts) groups whose T may differ (rows decoding one token beside prompt chunks), in
        that order: logits (rows of every group, V) of each row's last token only."""
        device = groups[0][0].device
        batch = SlotBatch(
            caches, [(rows, starts, ids.shape[1]) for ids, rows, starts in groups], device
        )
        ids = torch.cat([ids.flatten() for ids, _, _ in groups])[None]  # (1, N)
        return self.head(self.backbone.forward_slots(ids, batch)[0, batch.last])
