"""The decode loop: yields new tokens as they come, for the CLI, the Python API and the server.

It talks to a model through `init_state(batch_size, device)` and `step(token_ids, state)` only,
so KV-cache transformers and recurrent nets share it; never reach into the state here.
"""

import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.generation.sampling import apply_repetition_penalty, check_sampling, sample_next_token

logger = logging.getLogger(__name__)

FINISHED = -1  # what generate() yields for a row that has no new token at this step


def _as_prompts(prompt_ids) -> list[list[int]]:
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


def _model_device(model) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def generate(
    model,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    num_samples: int = 1,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Iterator[Tensor]:
    """Sample new tokens from a causal LM; yields a (B,) long tensor per step as they come.

    Rows are prompt-major: B = len(prompts) * num_samples, row r continues prompt
    r // num_samples. A row yields -1 (`FINISHED`) at a step where it has no new token: after
    it made a stop token (the stop token itself is yielded) or max_new_tokens, or, with prompts
    of different lengths, while it still reads its own prompt. The loop ends when every row is
    done. Prompts longer than the model's context (`model.config.max_seq_len`; none for RNNs)
    keep their last max_seq_len tokens; once the context is full, each step re-reads the last
    max_seq_len tokens, as a model without a cache would, so max_new_tokens may exceed it.

    Args:
        prompt_ids: one prompt (list of ids, 1-D tensor) or several (list of lists, 2-D tensor).
        temperature: 0 is greedy (argmax); filters top_k, top_p, min_p apply after it.
        repetition_penalty: CTRL-style, over every token the row has seen; 1.0 is off.
        seed: seeds a torch.Generator on `device`, so the same call gives the same tokens.
        device: where the ids and the state live; defaults to the model's parameters' device.

    Example:
        rows = [[] for _ in range(2)]
        for ids in generate(model, [5, 17, 3], max_new_tokens=20, num_samples=2, seed=0):
            for row, t in zip(rows, ids.tolist()):
                row += [t] if t >= 0 else []
    """
    check_sampling(temperature, top_k, top_p, min_p, repetition_penalty)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples={num_samples!r} must be an integer >= 1")
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    prompts = _as_prompts(prompt_ids)
    if context is not None and any(len(p) > context for p in prompts):
        longest = max(len(p) for p in prompts)
        logger.warning(
            "prompt of %d tokens is longer than the model's context (max_seq_len=%d); "
            "keeping its last %d tokens",
            longest,
            context,
            context,
        )
        prompts = [p[-context:] for p in prompts]
    prompts = [p for p in prompts for _ in range(num_samples)]
    device = torch.device(device) if device is not None else _model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    stop_token_ids = tuple(stop_token_ids)
    return _decode(
        model,
        prompts,
        max_new_tokens,
        sampling,
        repetition_penalty,
        stop_token_ids,
        context,
        generator,
        device,
    )


def _decode(
    model, prompts, max_new_tokens, sampling, penalty, stop_token_ids, context, generator, device
):
    """The loop behind generate(): sample, yield, feed; tensors made under inference_mode only
    (a mode left on across `yield` would leak into the caller's code)."""
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            B = len(prompts)
            lengths = [len(p) for p in prompts]
            first, longest = min(lengths), max(lengths)
            width = longest + max_new_tokens
            history = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=device)
            prompt_lens = torch.tensor(lengths, device=device)
            stop_ids = torch.tensor(stop_token_ids, dtype=torch.long, device=device)
            num_new = torch.zeros(B, dtype=torch.long, device=device)
            finished = torch.zeros(B, dtype=torch.bool, device=device)
            state = model.init_state(B, device)
            logits, state = model.step(history[:, :first], state)  # prefill the common part
            pos = window = first  # tokens in `history` / in the state
        while True:
            with torch.inference_mode():
                next_logits = logits[:, -1]  # (B, V)
                if penalty != 1.0:
                    next_logits = apply_repetition_penalty(next_logits, history[:, :pos], penalty)
                token = sample_next_token(next_logits, generator=generator, **sampling)  # (B,)
                emits = ~finished
                if pos < longest:  # rows still reading their prompt take its next token
                    reading = prompt_lens > pos
                    token = torch.where(reading, history[:, pos], token)
                    emits &= ~reading
                num_new += emits
                if len(stop_token_ids):
                    finished |= emits & torch.isin(token, stop_ids)
                finished |= num_new >= max_new_tokens
                out = torch.where(emits, token, FINISHED)
                done = bool(finished.all())
            yield out
            if done:
                return
            with torch.inference_mode():
                history[:, pos] = token
                pos += 1
                if context is not None and window == context:  # full: slide the window
                    state = model.init_state(B, device)
                    logits, state = model.step(history[:, pos - context : pos], state)
                else:
                    logits, state = model.step(history[:, pos - 1 : pos], state)
                    window += 1
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- text in, text out


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if ids:
        return ids
    # An empty prompt starts from the start token, else from end-of-text (GPT-2's convention).
    for start in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)):
        if start is not None:
            return [start]
    raise ConfigError(
        "the prompt encodes to no tokens and the tokenizer has no bos/eos token; "
        "give a non-empty prompt"
    )


def _text_options(tokenizer, stop, sampling) -> tuple[list[str], set[int]]:
    eos = getattr(tokenizer, "eos_id", None)
    sampling.setdefault("stop_token_ids", () if eos is None else (eos,))
    stop = [stop] if isinstance(stop, str) else stop or ()
    return [s for s in stop if s], set(sampling["stop_token_ids"])


def _release(text: str, sent: int, stops: list[str], final: bool) -> tuple[str, int, bool]:
    """What of text[sent:] can go out now: (piece, new sent, hit a stop string)."""
    if not stops:
        return text[sent:], len(text), False
    # Held-back text never ends in a stop string's prefix, so a match starts at `sent` or later.
    hits = [i for i in (text.find(s, sent) for s in stops) if i >= 0]
    if hits:
        return text[sent : min(hits)], min(hits), True
    end = len(text)
    if not final:  # hold back a tail that may grow into a stop string
        for k in range(min(max(map(len, stops)) - 1, end - sent), 0, -1):
            if any(s.startswith(text[end - k :]) for s in stops):
                end -= k
                break
    return text[sent:end], end, False


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    stop: Sequence[str] | None = None,
    **sampling,
) -> Iterator[str]:
    """Continue `prompt` and yield the new text in pieces as tokens come (one sample).

    Decoding is incremental over the whole output, so characters split across byte-level BPE
    tokens come out whole. Generation ends at the tokenizer's eos id (unless `stop_token_ids`
    says otherwise), after max_new_tokens, or at the first of the `stop` strings, which is not
    yielded. Other keyword arguments are generate()'s sampling options (temperature, top_k,
    top_p, min_p, repetition_penalty, stop_token_ids, seed, device).

    Example:
        for piece in generate_text(model, tok, "ROMEO:", max_new_tokens=200, stop=["\\n\\n"]):
            print(piece, end="", flush=True)
    """
    if sampling.get("num_samples", 1) != 1:
        raise ConfigError("generate_text makes one sample; use generate_texts(num_samples=N)")
    stops, stop_ids = _text_options(tokenizer, stop, sampling)
    prompt_ids = _prompt_ids(tokenizer, prompt)
    tokens = generate(model, prompt_ids, max_new_tokens, **sampling)
    return _stream_text(tokens, tokenizer, prompt_ids, stops, stop_ids)


def _stream_text(tokens, tokenizer, prompt_ids, stops, stop_ids) -> Iterator[str]:
    # A few prompt tokens give the decoder context (leading spaces, merges) for the first piece;
    # text is released when a window decodes to more than before and does not end mid-character.
    ids = list(prompt_ids[-4:])
    prefix, read = 0, len(ids)
    text, sent = "", 0
    for step_ids in tokens:
        token = int(step_ids[0])
        if token == FINISHED or token in stop_ids:
            continue
        ids.append(token)
        before = tokenizer.decode(ids[prefix:read])
        after = tokenizer.decode(ids[prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            continue
        text += after[len(before) :]
        prefix, read = read, len(ids)
        piece, sent, stopped = _release(text, sent, stops, final=False)
        if piece:
            yield piece
        if stopped:
            return
    if read < len(ids):  # an unfinished character at the very end
        text += tokenizer.decode(ids[prefix:])[len(tokenizer.decode(ids[prefix:read])) :]
    piece, sent, _ = _release(text, sent, stops, final=True)
    if piece:
        yield piece


def generate_texts(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 200,
    stop: Sequence[str] | None = None,
    num_samples: int = 1,
    **sampling,
) -> list[str]:
    """Continue one or several prompts, num_samples times each; returns the new texts.

    The list is prompt-major (all samples of the first prompt, then the second, ...); each text
    ends before the first `stop` string or stop token. Keyword arguments are as generate_text's.

    Example:
        texts = generate_texts(model, tok, "wine review :", num_samples=4, temperature=0.5, seed=1)
    """
    stops, stop_ids = _text_options(tokenizer, stop, sampling)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    prompt_ids = [_prompt_ids(tokenizer, p) for p in prompts]
    rows: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
    for step_ids in generate(
        model, prompt_ids, max_new_tokens, num_samples=num_samples, **sampling
    ):
        for row, token in zip(rows, step_ids.tolist()):
            if token != FINISHED and token not in stop_ids:
                row.append(token)
    texts = []
    for row in rows:
        text = tokenizer.decode(row)
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        texts.append(text[: min(hits)] if hits else text)
    return texts
