"""Beam search: the best continuations by summed log-probability, batched over prompts.

It follows transformers' beam search step for step (the best 2 x num_beams candidates per step,
finished beams scored sum_logprobs / length ** length_penalty, the same early-stopping rules), so
on the same weights both return the same tokens. It runs on the engine (engine.py): each beam is
a slot, every prompt's beams step in one forward, and a reorder copies slots in place.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.generation.engine import Engine, slots_that_fit
from lmforge.generation.prompts import as_prompts, crop_prompts, left_padded, model_device
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
    if not (hasattr(model, "step_slots") and hasattr(model, "copy_slots")):
        raise ConfigError(
            "beam search runs on the engine: it needs a model with step_slots() and "
            f"copy_slots() (the GPT and char-RNN families); {type(model).__name__} has not: "
            "sample instead (num_beams=1)"
        )
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    prompts = crop_prompts(as_prompts(prompt_ids), context, room=1)
    # every beam must fit in the context: a prompt's beams stop where it is full
    max_new = [
        max_new_tokens if context is None else min(max_new_tokens, context - len(p))
        for p in prompts
    ]
    was_training = model.training
    model.eval()
    try:
        return _search(
            model,
            prompts,
            max_new,
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


def _engine(model, prompts, max_new, K, device) -> Engine:
    """An engine with a slot for each beam of each prompt, each as long as its beams grow."""
    context = getattr(model.config, "max_seq_len", None)
    length = None if context is None else max(len(p) + m for p, m in zip(prompts, max_new))
    fit = slots_that_fit(model, len(prompts) * K, length, device)
    if fit is not None:
        raise ConfigError(
            f"{fit[1]}: one slot per beam (prompts x num_beams); search at most {fit[0]} beams "
            "at once (fewer prompts, a smaller num_beams / --num-beams)"
        )
    # threads: torch's count, as the caller set it (generate_text picks the fastest)
    return Engine(model, len(prompts) * K, length, device=device, threads=torch.get_num_threads())


def _reassign(slots: list[int], sources: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """The slots of a prompt's new beams, new beam j continuing old beam sources[j], and the
    (source, destination) slot copies that makes: an old beam's first child keeps its slot, a
    second child takes the slot of an old beam no one continues."""
    new: list[int | None] = [None] * len(slots)
    kept = set()
    for j, b in enumerate(sources):
        if b not in kept:
            kept.add(b)
            new[j] = slots[b]
    free = [slots[b] for b in range(len(slots)) if b not in kept]
    copies = []
    for j, b in enumerate(sources):
        if new[j] is None:
            new[j] = free.pop()
            copies.append((slots[b], new[j]))
    return new, copies


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
    lengths = [len(p) for p in prompts]
    engine = _engine(model, prompts, max_new, K, device)
    # every prompt read in one forward into its first beam's slot, then copied to the others
    slots = [list(range(n * K, n * K + K)) for n in range(N)]  # slots[n][j]: beam j's slot
    groups = [(torch.tensor([p], device=device), [s[0]], [0]) for p, s in zip(prompts, slots)]
    logits = engine.forward_slots(groups)  # (N, V)
    engine.copy_slots([s[0] for s in slots for _ in s[1:]], [d for s in slots for d in s[1:]], P)
    rows = torch.arange(N, device=device).repeat_interleave(K)  # every prompt K times
    logits = logits[rows]  # (N * K, V)
    # the token history: prompts right-aligned so every beam's step-t token sits in column P + t
    ids, real = left_padded(prompts, max(max_new), device)  # (N, W), W = P + max new
    real = real[rows]
    W = ids.shape[1]
    running = ids[rows].view(N, K, W)
    running_scores = torch.zeros(N, K, device=device)
    running_scores[:, 1:] = _NEVER  # step one draws from the first copy only, never K repeats
    done = running.clone()  # finished beams and their scores, best first
    done_scores = torch.full((N, K), _NEVER, device=device)
    done_lengths = torch.zeros(N, K, dtype=torch.long, device=device)
    is_done = torch.zeros(N, K, dtype=torch.bool, device=device)
    may_improve = torch.ones(N, 1, dtype=torch.bool, device=device)  # False: the prompt is over
    live = list(range(N))  # the prompts whose beams still step
    last_step = torch.tensor(max_new, device=device)[:, None] - 1  # (N, 1)
    never_length = torch.tensor([m**length_penalty for m in max_new], device=device)[:, None]
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    keep = max(2, 1 + len(stops)) * K  # enough that K beams go on even if K candidates stop
    top_k_mask = torch.arange(keep, device=device) < K  # only these may become finished beams
    for step in range(max(max_new)):
        pos = P + step  # the column this step writes
        log_probs = logits.float().log_softmax(-1)  # (N * K, V)
        if ngram:
            flat = running.view(N * K, W)
            log_probs = no_repeat_ngram_filter(log_probs, flat[:, :pos], ngram, real[:, :pos])
        V = log_probs.shape[-1]
        totals = (log_probs.view(N, K, V) + running_scores[:, :, None]).view(N, K * V)
        cand_scores, flat_index = totals.topk(keep, dim=1)  # (N, keep), best first
        beam, token = flat_index // V, flat_index % V
        cand = _gather(running, beam)  # (N, keep, W)
        cand[:, :, pos] = token
        stopped = torch.isin(token, stop_ids) | (step >= last_step)
        if is_stopped is not None:  # asked of the prompts still searched only
            new = cand[:, :, P : pos + 1].tolist()
            flags = [[False] * keep for _ in range(N)]
            for n in live:
                flags[n] = [bool(is_stopped(t)) for t in new[n]]
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
            best_possible = running_scores[:, :1] / never_length
        else:
            best_possible = running_scores[:, :1] / (step + 1) ** length_penalty
        worst = torch.where(is_done, done_scores.min(1, keepdim=True).values, _NEVER)
        may_improve = may_improve & (best_possible > worst).any(-1, keepdim=True)
        # a prompt is also over when no candidate runs on (every one stopped, or its last step)
        # or, stopping early, once K beams finished; its beams leave the forward
        may_improve &= ~stopped.all(1, keepdim=True)
        if early_stopping is True:
            may_improve &= ~is_done.all(1, keepdim=True)
        live = may_improve[:, 0].nonzero()[:, 0].tolist()
        if not live:
            break
        sources, copies = source.tolist(), []
        for n in live:
            slots[n], moved = _reassign(slots[n], sources[n])
            copies += moved
        engine.copy_slots([s for s, _ in copies], [d for _, d in copies], pos)
        # one forward over every live beam, in slot order (slots side by side are read as a view)
        order = sorted(
            (slot, n * K + j, lengths[n] + step) for n in live for j, slot in enumerate(slots[n])
        )
        beam_rows = torch.tensor([r for _, r, _ in order], device=device)
        tokens = running.view(N * K, W)[beam_rows, pos : pos + 1]  # (beams, 1)
        out = engine.forward_slots([(tokens, [o[0] for o in order], [o[2] for o in order])])
        logits = out.new_zeros(N * K, V)  # the rows of prompts that are over stay unread
        logits[beam_rows] = out
    out = []
    for n in range(N):
        beams = []
        for j in range(num_return):
            length = int(done_lengths[n, j])
            beams.append(Hypothesis(done[n, j, P : P + length].tolist(), float(done_scores[n, j])))
        out.append(beams)
    return out
