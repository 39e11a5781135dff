"""Beam search: the best continuations by summed log-probability, batched over prompts.

It follows transformers' beam search step for step (the best 2 x num_beams candidates per step,
finished beams scored sum_logprobs / length ** length_penalty, the same early-stopping rules), so
on the same weights both return the same tokens. Prompts of different lengths are left-padded;
the model needs `step(..., padding_mask=)` and `reorder_state(state, rows)` (GPT has both).
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.generation.prompts import (
    as_prompts,
    crop_prompts,
    feed,
    left_padded,
    model_device,
    takes_padding_mask,
)
from lmforge.generation.sampling import no_repeat_ngram_filter

_NEVER = -1.0e9  # transformers' "very large negative" score: keeps a beam out of every top-k


class Hypothesis(NamedTuple):
    """One finished beam: its new tokens (ending with the stop token when one ended it) and its
    score, the sum of their log-probabilities / len(token_ids) ** length_penalty."""

    token_ids: list[int]
    score: float


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x[n, index[n, j]] for (N, M, ...) x and (N, J) index -> (N, J, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def _check(num_beams, num_return, length_penalty, early_stopping, ngram, max_new_tokens) -> None:
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ConfigError(f"num_beams={num_beams!r} must be an integer >= 1")
    if not isinstance(num_return, int) or not 1 <= num_return <= num_beams:
        raise ConfigError(
            f"num_return={num_return!r} must be between 1 and num_beams={num_beams}; "
            "raise num_beams to get more beams back"
        )
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    if not isinstance(ngram, int) or ngram < 0:
        raise ConfigError(f"no_repeat_ngram_size={ngram!r} must be an integer >= 0 (0 is off)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if not isinstance(length_penalty, (int, float)):
        raise ConfigError(f"length_penalty={length_penalty!r} must be a number (1.0 is neutral)")


@torch.inference_mode()
def beam_search(
    model,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return: int = 1,
    no_repeat_ngram_size: int = 0,
    stop_token_ids: Sequence[int] = (),
    is_stopped: Callable[[list[int]], bool] | None = None,
    device: torch.device | str | None = None,
) -> list[list[Hypothesis]]:
    """The `num_return` best beams of each prompt, best first.

    Args:
        length_penalty: finished beams score sum_logprobs / length ** length_penalty; > 0 favours
            longer outputs, < 0 shorter ones.
        early_stopping: True stops a prompt once num_beams beams finished; False (transformers'
            default) stops when the best running beam, at its current length, cannot beat the
            worst finished one; "never" only when that cannot happen at any length.
        stop_token_ids: a beam that makes one of these is finished (it keeps the token).
        is_stopped: called with a candidate's new token ids; True finishes it there (stop
            strings: `lambda ids: "\\n\\n" in tok.decode(ids)`).

    Example:
        best = beam_search(model, [[464, 3290]], max_new_tokens=20, num_beams=4,
                           stop_token_ids=[tok.eos_id])[0][0]
        print(tok.decode(best.token_ids), best.score)
    """
    _check(
        num_beams, num_return, length_penalty, early_stopping, no_repeat_ngram_size, max_new_tokens
    )
    if not takes_padding_mask(model) or not hasattr(model, "reorder_state"):
        raise ConfigError(
            f"beam search needs a model with step(..., padding_mask=) and reorder_state(); "
            f"{type(model).__name__} has not: sample instead (num_beams=1)"
        )
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    prompts = crop_prompts(as_prompts(prompt_ids), context, room=1)
    longest = max(len(p) for p in prompts)
    if context is not None and longest + max_new_tokens > context:
        max_new_tokens = context - longest  # every beam must fit in the context
    was_training = model.training
    model.eval()
    try:
        return _search(
            model,
            prompts,
            max_new_tokens,
            num_beams,
            float(length_penalty),
            early_stopping,
            num_return,
            no_repeat_ngram_size,
            tuple(stop_token_ids),
            is_stopped,
            torch.device(device) if device is not None else model_device(model),
        )
    finally:
        model.train(was_training)


def _search(
    model,
    prompts,
    max_new,
    K,
    length_penalty,
    early_stopping,
    num_return,
    ngram,
    stops,
    is_stopped,
    device,
):
    N, P = len(prompts), max(len(p) for p in prompts)
    ids, real = left_padded(prompts, max_new, device)  # (N, W), W = P + max_new
    state = model.init_state(N, device)
    logits, state = feed(model, ids, real, 0, P, state)
    rows = torch.arange(N, device=device).repeat_interleave(K)  # every prompt K times
    state = model.reorder_state(state, rows)
    logits, ids, real = logits[rows, -1:], ids[rows], real[rows]
    W = ids.shape[1]
    running = ids.view(N, K, W)
    running_scores = torch.zeros(N, K, device=device)
    running_scores[:, 1:] = _NEVER  # step one draws from the first copy only, never K repeats
    done = running.clone()  # finished beams and their scores, best first
    done_scores = torch.full((N, K), _NEVER, device=device)
    done_lengths = torch.zeros(N, K, dtype=torch.long, device=device)
    is_done = torch.zeros(N, K, dtype=torch.bool, device=device)
    may_improve = torch.ones(N, 1, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    keep = max(2, 1 + len(stops)) * K  # enough that K beams go on even if K candidates stop
    top_k_mask = torch.arange(keep, device=device) < K  # only these may become finished beams
    arange_n = torch.arange(N, device=device)[:, None]
    for step in range(max_new):
        pos = P + step  # the column this step writes
        log_probs = logits[:, -1].float().log_softmax(-1)  # (N * K, V)
        if ngram:
            flat = running.view(N * K, W)
            log_probs = no_repeat_ngram_filter(log_probs, flat[:, :pos], ngram, real[:, :pos])
        V = log_probs.shape[-1]
        totals = (log_probs.view(N, K, V) + running_scores[:, :, None]).view(N, K * V)
        cand_scores, flat_index = totals.topk(keep, dim=1)  # (N, keep), best first
        beam, token = flat_index // V, flat_index % V
        cand = _gather(running, beam)  # (N, keep, W)
        cand[:, :, pos] = token
        stopped = torch.isin(token, stop_ids) | (step + 1 == max_new)
        if is_stopped is not None:
            new = cand[:, :, P : pos + 1].tolist()
            flags = [[bool(is_stopped(t)) for t in row] for row in new]
            stopped |= torch.tensor(flags, device=device)
        # the K best candidates that did not stop run on
        open_scores = cand_scores + stopped.float() * _NEVER
        best = open_scores.topk(K, dim=1).indices  # (N, K)
        running, running_scores = _gather(cand, best), _gather(open_scores, best)
        source = _gather(beam, best)  # which old beam each new one continues
        # candidates among the top K that stopped join the finished beams if they score higher
        finished_now = stopped & top_k_mask
        scores = cand_scores / (step + 1) ** length_penalty
        is_full = is_done.all(1, keepdim=True) & (early_stopping is True)
        scores = scores + (is_full | ~may_improve | ~finished_now).float() * _NEVER
        merged_scores = torch.cat([done_scores, scores], 1)
        pick = merged_scores.topk(K, dim=1).indices
        done = _gather(torch.cat([done, cand], 1), pick)
        done_scores = _gather(merged_scores, pick)
        new_lengths = torch.full((N, keep), step + 1, dtype=torch.long, device=device)
        done_lengths = _gather(torch.cat([done_lengths, new_lengths], 1), pick)
        is_done = _gather(torch.cat([is_done, finished_now], 1), pick)
        # can a running beam still beat the worst finished one?
        if early_stopping == "never" and length_penalty > 0:
            best_length = max_new
        else:
            best_length = step + 1
        best_possible = running_scores[:, :1] / best_length**length_penalty
        worst = torch.where(is_done, done_scores.min(1, keepdim=True).values, _NEVER)
        may_improve = may_improve & (best_possible > worst).any(-1, keepdim=True)
        everyone_done = bool(is_done.all()) and early_stopping is True
        if not bool(may_improve.any()) or everyone_done or bool(stopped.all()):
            break
        rows = (arange_n * K + source).flatten()
        state = model.reorder_state(state, rows)
        real = real[rows]
        flat = running.view(N * K, W)
        logits, state = feed(model, flat, real, pos, pos + 1, state)
    out = []
    for n in range(N):
        beams = []
        for j in range(num_return):
            length = int(done_lengths[n, j])
            beams.append(Hypothesis(done[n, j, P : P + length].tolist(), float(done_scores[n, j])))
        out.append(beams)
    return out
