"""Character-level recurrent LMs: embedding -> LSTM or GRU -> dense logits (MISSION workflow 2).

The decoding state is the RNN's own: `(h, c)` for an LSTM, `h` for a GRU, each (L, B, hidden_dim),
so generation feeds one character per step and never re-reads the prefix. `loss()` also carries
that state across batches, detached, when the batch says it continues the last one (--stateful).
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.layers.dropout import Dropout
from lmforge.models.base import Backbone, CausalLM, check_config

# ---------------------------------------------------------------- config

CELLS = ("lstm", "gru")

RNNState = Tensor | tuple[Tensor, Tensor]  # GRU: h; LSTM: (h, c); each (L, B, hidden_dim)


@dataclass
class CharRNNConfig:
    """Shape of a char RNN; the defaults are the TensorFlow text-generation tutorial's model
    (embedding 256, one LSTM of 1024 units: about 5.3M parameters on 65 characters).

    dropout applies to the RNN's outputs (and between layers when num_layers > 1).
    """

    vocab_size: int = 65  # Tiny Shakespeare's distinct characters
    embed_dim: int = 256
    hidden_dim: int = field(default=1024, metadata={"help": "RNN units per layer"})
    num_layers: int = 1
    cell: str = field(default="lstm", metadata={"help": "|".join(CELLS), "choices": list(CELLS)})
    dropout: float = 0.0

    def __post_init__(self):
        check_config(self, ("vocab_size", "embed_dim", "hidden_dim", "num_layers"), {})
        if self.cell not in CELLS:
            raise ConfigError(f"cell={self.cell!r} is unknown; use --cell lstm or --cell gru")


# ---------------------------------------------------------------- backbone


class CharRNNBackbone(Backbone):
    """Token embedding and a stack of LSTM or GRU layers: ids (B, T) -> hidden (B, T, hidden_dim).

    `forward` starts from a zero state; `run` takes and returns the state, for decoding and for
    stateful training. padding_mask is accepted and ignored: pads sit after the real tokens, and
    a causal RNN's output at a real position never depends on later inputs.
    """

    family = "char_rnn"

    def __init__(self, config: CharRNNConfig):
        super().__init__(config)
        c = config
        # PyTorch's default initialisation. Keras' (the reference curve's: embedding +-0.05,
        # glorot/orthogonal kernels) left the LSTM on the unigram plateau for ~20 more steps
        # (loss 3.3 vs 2.4 at step 27) and made the GRU's loss jump to 11.5 at step 5, measured
        # on this family's Shakespeare recipe.
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        rnn_cls = nn.LSTM if c.cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            c.embed_dim,
            c.hidden_dim,
            c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.drop = Dropout(c.dropout)

    def forward(self, token_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.run(token_ids)[0]

    def run(self, token_ids: Tensor, state: RNNState | None = None) -> tuple[Tensor, RNNState]:
        """(B, T) ids after `state` (None = zeros) -> hidden (B, T, hidden_dim), the new state."""
        x = self.embed(token_ids)  # (B, T, E)
        if x.device.type == "cpu" and x.shape[0] == 1:
            # oneDNN's CPU RNN lays the weights out anew at every call: for one sequence (one
            # sample, a character per step) PyTorch's own kernels are faster (3 vs 125 ms a step
            # for the 5.3M LSTM on 2 AVX2 cores); for batches oneDNN is (10 vs 40 s for 64 x 100).
            with torch.backends.mkldnn.flags(
                enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None
            ):
                hidden, state = self.rnn(x, state)
        else:
            hidden, state = self.rnn(x, state)  # (B, T, H); state (L, B, H) or a pair of them
        return self.drop(hidden), state


# ---------------------------------------------------------------- tasks


def _detach(state: RNNState) -> RNNState:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class CharRNNCausalLM(CausalLM):
    """Char RNN backbone + a dense layer over the vocabulary.

    Example:
        model = CharRNNCausalLM(CharRNNConfig(vocab_size=65, hidden_dim=64))
        logits = model(torch.randint(0, 65, (2, 16)))               # (2, 16, 65)
        ids = next(model.generate([1, 2, 3], max_new_tokens=5, seed=0))
    """

    family = "char_rnn"
    is_recurrent = True  # the trainer's --stateful check: loss() can carry state across batches

    def __init__(self, backbone: CharRNNBackbone | CharRNNConfig, preprocessor=None):
        if isinstance(backbone, CharRNNConfig):
            backbone = CharRNNBackbone(backbone)
        super().__init__(backbone, preprocessor)
        self.head = nn.Linear(self.config.hidden_dim, self.config.vocab_size)
        self._carry: RNNState | None = None  # the last batch's final state, when stateful

    def forward(self, token_ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.head(self.backbone(token_ids))  # (B, T, V)

    def loss(self, batch: dict) -> Tensor:
        """Mean cross-entropy in float32 over labels != -100.

        Args:
            batch: "token_ids" (B, T) long, "labels" (B, T) long already shifted. With an
                "is_continuation" bool scalar (ConsecutiveBatcher, --stateful), the RNN starts
                from the previous batch's final state when it is True and from zeros when False,
                and keeps this batch's final state, detached (truncated backpropagation through
                time); without it every batch starts from zeros.
        """
        is_stateful = "is_continuation" in batch
        state = self._carry if is_stateful and bool(batch["is_continuation"]) else None
        hidden, state = self.backbone.run(batch["token_ids"], state)
        if is_stateful:
            self._carry = _detach(state)
        logits = self.head(hidden)  # (B, T, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
        )

    def init_state(self, batch_size: int, device: torch.device | None = None) -> RNNState:
        """Zeros: h, or (h, c) for an LSTM, each (num_layers, batch_size, hidden_dim)."""
        c = self.config
        weight = self.backbone.embed.weight  # not the head's: int8 once quantized
        h = torch.zeros(
            c.num_layers,
            batch_size,
            c.hidden_dim,
            device=device or weight.device,
            dtype=weight.dtype,
        )
        return (h, torch.zeros_like(h)) if c.cell == "lstm" else h

    def step(self, token_ids: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        """Feed (B, t) tokens after those in `state`: logits (B, t, V) and the new state."""
        hidden, state = self.backbone.run(token_ids, state)
        return self.head(hidden), state

    # An engine's slots (lmforge.generation.engine): the state of `slots` rows, allocated once;
    # each step reads and writes back the rows it feeds.

    def slot_bytes(self, slots: int, max_len: int | None = None) -> int:
        c = self.config
        parts = 2 if c.cell == "lstm" else 1
        return parts * c.num_layers * slots * c.hidden_dim * self.head.weight.element_size()

    def init_slots(self, slots: int, max_len: int | None = None, device=None) -> RNNState:
        return self.init_state(slots, device)

    def copy_slots(
        self, state: RNNState, src_rows: list[int], dst_rows: list[int], length=None
    ) -> None:
        """Slot dst_rows[i] takes slot src_rows[i]'s h (and c), in place: beam search's reorder
        (`length` is the transformers' argument: an RNN's state has no positions)."""
        for part in state if isinstance(state, tuple) else (state,):  # (layers, slots, hidden)
            part[:, dst_rows] = part[:, src_rows]

    def step_slots(
        self, token_ids: Tensor, state: RNNState, rows: list[int], starts: list[int]
    ) -> Tensor:
        """Feed (n, t) tokens, row i into slot rows[i] (from a zero state when starts[i] is 0,
        else after what that slot read): logits (n, t, V); the slots' state is updated."""
        index = torch.tensor(rows, device=token_ids.device)
        kept = torch.tensor(starts, device=token_ids.device)[None, :, None] > 0  # (1, n, 1)
        parts = state if isinstance(state, tuple) else (state,)
        rows_in = tuple(s.index_select(1, index) * kept for s in parts)
        logits, rows_out = self.step(token_ids, rows_in if len(parts) == 2 else rows_in[0])
        rows_out = rows_out if isinstance(rows_out, tuple) else (rows_out,)
        for s, out in zip(parts, rows_out):
            s.index_copy_(1, index, out)
        return logits


# ---------------------------------------------------------------- presets

# The TensorFlow "Text generation with an RNN" tutorial: the text cut into disjoint chunks of
# 100 characters + 1 target (Tiny Shakespeare: 11,043 chunks, 172 batches), shuffled batches of
# 64 reshuffled every epoch, Adam at Keras defaults (lr 1e-3 constant, beta2 0.999, no decay,
# no clipping, no warmup), 10 epochs, a checkpoint every epoch. Reference training loss (the
# mean over an epoch's batches): 2.57 after epoch 1, 1.17 after epoch 10.
_TUTORIAL_RECIPE = dict(
    batching="epochs",
    disjoint_windows=True,
    block_size=100,
    batch_size=64,
    lr=1e-3,
    beta1=0.9,
    beta2=0.999,
    weight_decay=0.0,
    grad_clip=0.0,
    warmup_steps=0,
    schedule="constant",
    epochs=10,
    save_every_epoch=True,
)

# What a --max-time / --max-tokens budget picks among (lmforge/training/budget.py; README
# "Budget-aware recipes" has what each reaches at several token budgets). 1024 units, the
# tutorial's, is no candidate: ahead per token (1.637 at 2.56M against 512's 1.677) but 2.8x
# slower than 512, and it memorises the 1M characters after 7 epochs (best 1.490 at 6.9M
# tokens), before a time budget feeds it as much as 512 needs to win (3 per parameter, 16M).
_CANDIDATES = [dict(hidden_dim=256), dict(hidden_dim=512)]

PRESETS = {
    "char-rnn-lstm-shakespeare": dict(
        config=dict(vocab_size=65, embed_dim=256, hidden_dim=1024, num_layers=1, cell="lstm"),
        tokenizer="char",
        about="embedding 256 + one LSTM of 1024 units (5.3M), the TensorFlow char-RNN tutorial",
        candidates=_CANDIDATES,
        train=dict(_TUTORIAL_RECIPE),
    ),
    "char-rnn-gru-shakespeare": dict(
        config=dict(vocab_size=65, embed_dim=256, hidden_dim=1024, num_layers=1, cell="gru"),
        tokenizer="char",
        about="embedding 256 + one GRU of 1024 units (4.0M), the TensorFlow tutorial's GRU",
        candidates=_CANDIDATES,
        train=dict(_TUTORIAL_RECIPE),
    ),
}
