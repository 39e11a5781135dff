"""The most probable next tokens for a prompt, and the attention maps behind them.

`inspect_prompt` does both in one forward pass and is what the renderers draw; a prompt must fit
the model's context (no silent cropping here, unlike generation: we show what the model saw).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import ConfigError
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


def encode_prompt(model: nn.Module, tokenizer, prompt: str) -> list[int]:
    """The prompt's ids, checked to be non-empty and to fit the model's context."""
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise ConfigError(f"the prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit is not None and len(ids) > limit:
        raise ConfigError(
            f"the prompt is {len(ids)} tokens long but the model's context is {limit} tokens "
            f"(max_seq_len); shorten it to at most {limit} tokens"
        )
    return ids


def _check_k(model: nn.Module, tokenizer, k: int) -> None:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or tokenizer.vocab_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"top-k {k!r} must be a positive integer")
    if k > vocab:
        raise ConfigError(
            f"top-k {k} is larger than the vocabulary of {vocab} tokens; ask for at most {vocab}"
        )


def top_next_tokens(logits: Tensor, tokenizer, k: int = 5) -> list[NextToken]:
    """The k most probable entries of one (V,) row of next-token logits."""
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(k)
    return [
        NextToken(token_text(tokenizer, i), i, p)
        for p, i in zip(top.values.tolist(), top.indices.tolist())
    ]


def _forward_last(model: nn.Module, ids: list[int]) -> Tensor:
    """Logits (V,) after the last of `ids`, in eval mode (the model's mode is restored)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return model(torch.tensor([ids], device=device))[0, -1]  # (1, T, V) -> (V,)
    finally:
        model.train(was_training)


@torch.inference_mode()
def next_token_table(model: nn.Module, tokenizer, prompt: str, k: int = 5) -> list[NextToken]:
    """The k most probable next tokens after `prompt` with their probabilities, best first.

    Works for any causal LM (transformer or RNN). Example:
        for row in next_token_table(model, tok, "wine review : germany"):
            print(f"{row.token:>12} {row.prob:.3f}")
    """
    _check_k(model, tokenizer, k)
    ids = encode_prompt(model, tokenizer, prompt)
    return top_next_tokens(_forward_last(model, ids), tokenizer, k)


@torch.inference_mode()
def inspect_prompt(model: nn.Module, tokenizer, prompt: str, k: int = 5) -> PromptInspection:
    """One forward pass over `prompt`: its tokens, every layer's attention, the top-k next tokens.

    Example:
        seen = inspect_prompt(model, tok, "wine review : germany", k=5)
        seen.next_tokens[0].token, seen.attention[0].shape  # (':', (H, T, T))
    """
    _check_k(model, tokenizer, k)
    ids = encode_prompt(model, tokenizer, prompt)
    with capture_attention(model) as maps:
        logits = _forward_last(model, ids)
    return PromptInspection(
        prompt=prompt,
        tokens=[token_text(tokenizer, i) for i in ids],
        token_ids=ids,
        attention=[m[0].cpu() for m in maps],  # (H, T, T) per layer
        next_tokens=top_next_tokens(logits, tokenizer, k),
    )
