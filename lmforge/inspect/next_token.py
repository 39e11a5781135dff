"""The most probable next tokens for a prompt, and the attention maps behind them.

`inspect_prompt` does both in one forward pass and is what the renderers draw; a prompt longer
than the model's context keeps its last tokens, with a warning, as in generation. A classifier's
table lists its labels' probabilities instead of next tokens.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.generation.prompts import crop_prompts
from lmforge.inspect.attention import capture_attention


@dataclass
class NextToken:
    """One row of a next-token table."""

    token: str  # display text of the token
    token_id: int
    prob: float  # softmax probability at temperature 1


@dataclass
class PromptInspection:
    """What the model saw and made of one prompt.

    Args:
        tokens: display text of each of the T prompt tokens.
        attention: one (H, T, T) float32 tensor per layer (on the CPU).
        next_tokens: the k most probable next tokens, most probable first.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    attention: list[Tensor]
    next_tokens: list[NextToken]


def token_text(tokenizer, token_id: int) -> str:
    """How one token reads on its own: decoded text, else its vocabulary entry, else <id N>."""
    try:
        text = tokenizer.decode([token_id])
    except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode is shown by number
        text = ""
    if not text or "\ufffd" in text:  # a byte-level BPE piece of a character
        text = tokenizer.id_to_token(token_id) if token_id < tokenizer.vocab_size else None
        text = text or f"<id {token_id}>"
    return text.replace("\n", "\u21b5")  # show line breaks as a visible mark


def _is_classifier(model: nn.Module) -> bool:
    return hasattr(model, "num_classes")


def encode_prompt(model: nn.Module, tokenizer, prompt: str) -> list[int]:
    """The prompt's ids as the model reads them: a classifier's between its start and end tokens
    (as it was trained); the last tokens that fit the model's context, with a warning."""
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise ConfigError(f"the prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if not _is_classifier(model):
        return crop_prompts([ids], limit)[0]
    ends = [getattr(tokenizer, a, None) for a in ("bos_id", "eos_id")]
    ends = [t for t in ends if t is not None]
    ids = crop_prompts([ids], limit, room=len(ends))[0]
    return ids if len(ends) < 2 else [ends[0], *ids, ends[1]]


def _num_choices(model: nn.Module, tokenizer) -> int:
    """Rows a table can have: the classifier's labels, else the vocabulary."""
    if _is_classifier(model):
        return model.num_classes
    return getattr(getattr(model, "config", None), "vocab_size", None) or tokenizer.vocab_size


def _check_k(model: nn.Module, tokenizer, k: int) -> int:
    """k, checked to be a positive integer and clipped to the choices there are."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"top-k {k!r} must be a positive integer")
    return min(k, _num_choices(model, tokenizer))


def top_next_tokens(logits: Tensor, tokenizer, k: int = 5, labels=None) -> list[NextToken]:
    """The k most probable entries of one (V,) row of next-token logits (or, with `labels`, of
    a classifier's (K,) label logits, shown by name)."""
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(k, probs.shape[-1]))
    return [
        NextToken(labels[i] if labels else token_text(tokenizer, i), i, p)
        for p, i in zip(top.values.tolist(), top.indices.tolist())
    ]


def _labels(model: nn.Module) -> list[str] | None:
    if not _is_classifier(model):
        return None
    return list(getattr(model, "labels", None) or [f"class {i}" for i in range(model.num_classes)])


def _forward_last(model: nn.Module, ids: list[int]) -> Tensor:
    """Logits (V,) after the last of `ids` (a classifier's (K,)), in eval mode (the model's
    mode is restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(torch.tensor([ids], device=device))
        return out[0] if out.dim() == 2 else out[0, -1]  # (1, K) -> (K,); (1, T, V) -> (V,)
    finally:
        model.train(was_training)


@torch.inference_mode()
def next_token_table(model: nn.Module, tokenizer, prompt: str, k: int = 5) -> list[NextToken]:
    """The k most probable next tokens after `prompt` with their probabilities, best first.

    Works for any causal LM (transformer or RNN). Example:
        for row in next_token_table(model, tok, "wine review : germany"):
            print(f"{row.token:>12} {row.prob:.3f}")
    """
    k = _check_k(model, tokenizer, k)
    ids = encode_prompt(model, tokenizer, prompt)
    return top_next_tokens(_forward_last(model, ids), tokenizer, k, _labels(model))


@torch.inference_mode()
def inspect_prompt(model: nn.Module, tokenizer, prompt: str, k: int = 5) -> PromptInspection:
    """One forward pass over `prompt`: its tokens, every layer's attention, the top-k next tokens
    (a classifier: its top-k labels; k is clipped to what there is).

    Example:
        seen = inspect_prompt(model, tok, "wine review : germany", k=5)
        seen.next_tokens[0].token, seen.attention[0].shape  # (':', (H, T, T))
    """
    k = _check_k(model, tokenizer, k)
    ids = encode_prompt(model, tokenizer, prompt)
    with capture_attention(model) as maps:
        logits = _forward_last(model, ids)
    return PromptInspection(
        prompt=prompt,
        tokens=[token_text(tokenizer, i) for i in ids],
        token_ids=ids,
        attention=[m[0].cpu() for m in maps],  # (H, T, T) per layer
        next_tokens=top_next_tokens(logits, tokenizer, k, _labels(model)),
    )
