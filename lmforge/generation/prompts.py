"""Prompts as token ids, shared by generate(), beam search, the engine and inspect: one or many
prompts -> id lists, cropping to the model's context, left padding, feeding columns to step().
"""

import inspect
import logging

import torch
from torch import Tensor

from lmforge.errors import ConfigError

# The crop warning keeps the logger name it had when it lived in generate.py: users filter on it.
logger = logging.getLogger("lmforge.generation.generate")


def as_prompts(prompt_ids) -> list[list[int]]:
    """One prompt (ids) or several (list of lists, 2-D tensor) -> a list of id lists."""
    if isinstance(prompt_ids, Tensor):
        if prompt_ids.dim() not in (1, 2):
            raise ConfigError(
                f"prompt_ids has shape {tuple(prompt_ids.shape)}; pass (T,) or (N, T) token ids"
            )
        prompts = prompt_ids.tolist()
        prompts = [prompts] if prompt_ids.dim() == 1 else prompts
    else:
        prompts = list(prompt_ids)
        if prompts and not hasattr(prompts[0], "__len__"):  # flat ids: a single prompt
            prompts = [prompts]
        prompts = [[int(t) for t in p] for p in prompts]
    if not prompts:
        raise ConfigError("no prompt given; pass a list of token ids or a list of such lists")
    for i, p in enumerate(prompts):
        if not p:
            raise ConfigError(
                f"prompt {i} is empty; give at least one token id (GPT-2 starts from end-of-text)"
            )
    return prompts


def model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def takes_padding_mask(model) -> bool:
    """True when model.step accepts padding_mask=, so prompts can be left-padded into one batch."""
    return "padding_mask" in inspect.signature(model.step).parameters


def left_padded(prompts: list[list[int]], extra: int, device) -> tuple[Tensor, Tensor]:
    """Prompts right-aligned in (B, longest + extra) ids with a (B, longest + extra) bool mask
    (True = real). Pads repeat each row's first token, so penalties over seen tokens ignore them."""
    longest = max(len(p) for p in prompts)
    ids = [[p[0]] * (longest - len(p)) + p + [0] * extra for p in prompts]
    real = [[False] * (longest - len(p)) + [True] * (len(p) + extra) for p in prompts]
    return torch.tensor(ids, device=device), torch.tensor(real, device=device)


def crop_prompts(prompts: list[list[int]], context: int | None, room: int = 0) -> list[list[int]]:
    """Keep the last `context - room` tokens of longer prompts, with one warning: what sampling,
    beam search (room=1: a beam needs a place for its first new token) and inspect all do.

    Args:
        room: positions of the context to leave free for what follows the prompt.
    """
    keep = None if context is None else max(1, context - room)
    if keep is None or all(len(p) <= keep for p in prompts):
        return prompts
    logger.warning(
        "prompt of %d tokens is longer than the model's context (max_seq_len=%d) allows; "
        "keeping its last %d tokens",
        max(len(p) for p in prompts),
        context,
        keep,
    )
    return [p[-keep:] for p in prompts]


def feed(model, ids: Tensor, real: Tensor | None, lo: int, hi: int, state):
    """model.step on columns lo:hi of ids, with their padding mask when there is one."""
    if real is None:
        return model.step(ids[:, lo:hi], state)
    return model.step(ids[:, lo:hi], state, padding_mask=real[:, lo:hi])
