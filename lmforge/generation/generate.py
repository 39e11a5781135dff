"""generate(): new tokens as they come, for the CLI and the Python API; the text layer on top.

Models with `step_slots` (GPT, char-RNN) decode on the Engine (engine.py), one slot per row;
any other causal LM is driven through `init_state(batch_size, device)` and
`step(token_ids, state)` by the loop here. Beam search (beam.py) runs on the Engine too.
"""

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lmforge import progress
from lmforge.errors import ConfigError
from lmforge.generation.beam import beam_search
from lmforge.generation.engine import (
    Engine,
    SamplingParams,
    best_threads,
    check_threads,
    decode_threads,
    slots_that_fit,
)
from lmforge.generation.prompts import (  # noqa: F401  (their old import path)
    as_prompts,
    crop_prompts,
    feed,
    left_padded,
    model_device,
    takes_padding_mask,
)
from lmforge.generation.sampling import (
    apply_repetition_penalty,
    check_sampling,
    no_repeat_ngram_filter,
    sample_next_token,
)
from lmforge.generation.text import TextStream, encode_prompt, text_options  # noqa: F401

# The names these helpers had when they lived here, for code written against them (the server's).
_as_prompts, _model_device = as_prompts, model_device
_prompt_ids, _text_options = encode_prompt, text_options

FINISHED = -1  # what generate() yields for a row that has no new token at this step


def _grown(history: Tensor, real: Tensor | None, needed: int) -> tuple[Tensor, Tensor | None]:
    """history (and its padding mask) with at least `needed` columns, doubling: memory follows
    the tokens made so far, never the number asked for (max_new_tokens may be huge)."""
    width = history.shape[1]
    if needed <= width:
        return history, real
    extra = max(needed, 2 * width) - width
    history = torch.cat([history, history.new_zeros(history.shape[0], extra)], 1)
    if real is not None:
        real = torch.cat([real, real.new_ones(real.shape[0], extra)], 1)
    return history, real


def generate(
    model,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop_token_ids: Sequence[int] = (),
    num_samples: int = 1,
    seed: int | None = None,
    device: torch.device | str | None = None,
    left_pad: bool = False,
    threads: int | None = None,
) -> Iterator[Tensor]:
    """Sample new tokens from a causal LM; yields a (B,) long tensor per step as they come.

    Rows are prompt-major: B = len(prompts) * num_samples, row r continues prompt
    r // num_samples. A row yields -1 (`FINISHED`) at a step where it has no new token: after
    it made a stop token (the stop token itself is yielded) or max_new_tokens, or, with prompts
    of different lengths and left_pad=False, while it still reads its own prompt. The loop ends
    when every row is done. Prompts longer than the model's context (`model.config.max_seq_len`;
    none for RNNs) keep their last max_seq_len tokens; once the context is full, each step
    re-reads the last max_seq_len tokens, as a model without a cache would, so max_new_tokens
    may exceed it.

    Args:
        prompt_ids: one prompt (list of ids, 1-D tensor) or several (list of lists, 2-D tensor).
        temperature: 0 is greedy (argmax); filters top_k, top_p, min_p apply after it.
        repetition_penalty: CTRL-style, over every token the row has seen; 1.0 is off.
        no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram of the row.
        seed: the same call gives the same tokens. On the engine row r draws from its own
            generator seeded with seed + r (a row's tokens do not depend on its neighbours);
            other models share one generator seeded with seed.
        device: where the ids and the state live; defaults to the model's parameters' device.
        left_pad: pad shorter prompts on the left and read all prompts in one batched forward,
            so every row emits from the first step (models whose step() takes padding_mask,
            like GPT; positions count real tokens only, so each row decodes as it would alone).
        threads: intra-op threads while decoding on the engine (torch's count is restored
            between steps); None picks the fastest for the model (`engine.best_threads`).

    Example:
        rows = [[] for _ in range(2)]
        for ids in generate(model, [5, 17, 3], max_new_tokens=20, num_samples=2, seed=0):
            for row, t in zip(rows, ids.tolist()):
                row += [t] if t >= 0 else []
    """
    check_sampling(temperature, top_k, top_p, min_p, repetition_penalty)
    check_threads(threads)
    if not (hasattr(model, "init_state") and hasattr(model, "step")):
        raise ConfigError(
            f"{type(model).__name__} does not generate text: generate() needs a causal language "
            "model (one with init_state() and step()), not a classifier or masked LM"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples={num_samples!r} must be an integer >= 1")
    if not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ConfigError(
            f"no_repeat_ngram_size={no_repeat_ngram_size!r} must be an integer >= 0 (0 is off)"
        )
    if left_pad and not takes_padding_mask(model):
        raise ConfigError(
            f"left_pad needs a model whose step() takes padding_mask; {type(model).__name__} "
            "reads prompts row by row: pass left_pad=False"
        )
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    prompts = crop_prompts(as_prompts(prompt_ids), context)
    device = torch.device(device) if device is not None else model_device(model)
    engine = hasattr(model, "step_slots")  # GPT and char-RNN: the engine, one slot per row
    if engine:
        length = _slot_length(context, prompts, max_new_tokens)
        fit = slots_that_fit(model, len(prompts) * num_samples, length, device)
        if fit is not None:
            raise ConfigError(
                f"{fit[1]}: one slot per row (prompts x num_samples); make at most {fit[0]} "
                "rows at once (fewer prompts, a smaller num_samples / --num-samples)"
            )
    prompts = [p for p in prompts for _ in range(num_samples)]
    if engine:
        options = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            stop_token_ids=tuple(stop_token_ids),
        )
        return _decode_on_engine(
            model, prompts, max_new_tokens, options, seed, device, left_pad, threads
        )
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    penalties = dict(penalty=repetition_penalty, ngram=no_repeat_ngram_size)
    stop_token_ids = tuple(stop_token_ids)
    return _decode(
        model,
        prompts,
        max_new_tokens,
        sampling,
        penalties,
        stop_token_ids,
        context,
        generator,
        device,
        left_pad,
    )


def _slot_length(context: int | None, prompts: list[list[int]], max_new_tokens: int) -> int | None:
    """Positions a slot needs for these rows: what the longest will hold, or the whole context
    when a row would pass it (rows then slide); None without a context (RNNs). A model with a
    long context (Qwen's 32k) so gets a cache for the tokens it will see, not for 32k."""
    if context is None:
        return None
    return min(context, max(len(p) for p in prompts) + max_new_tokens)


def _decode_on_engine(model, prompts, max_new_tokens, options, seed, device, left_pad, threads):
    """generate()'s rows on an Engine, one slot each, row r seeded with seed + r. Without
    left_pad a row yields its first token `len(prompt) - shortest` steps late, as if it read its
    prompt's extra tokens one a step, so steps keep the meaning they have for other models."""
    if max_new_tokens == 0:
        return
    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    length = _slot_length(context, prompts, max_new_tokens)
    engine = Engine(model, slots=len(prompts), max_len=length, device=device, threads=threads)
    handles = [
        engine.submit(
            prompt,
            SamplingParams(max_new_tokens, seed=None if seed is None else seed + r, **options),
        )
        for r, prompt in enumerate(prompts)
    ]
    shortest = min(len(p) for p in prompts)
    delays = [0 if left_pad else len(p) - shortest for p in prompts]
    was_training = model.training
    model.eval()  # once here, not at every engine step
    try:
        for step in itertools.count():
            rows = [(h, step - delay) for h, delay in zip(handles, delays)]  # j: token due now
            while any(0 <= j and len(h.tokens) <= j and not h.finished for h, j in rows):
                engine.step()
            out = [h.tokens[j] if 0 <= j < len(h.tokens) else FINISHED for h, j in rows]
            yield torch.tensor(out, device=device)
            if all(h.finished and j >= len(h.tokens) - 1 for h, j in rows):
                return
    finally:
        model.train(was_training)


def _decode(
    model,
    prompts,
    max_new_tokens,
    sampling,
    penalties,
    stop_token_ids,
    context,
    generator,
    device,
    left_pad,
):
    """The loop behind generate(): sample, yield, feed; tensors made under inference_mode only
    (a mode left on across `yield` would leak into the caller's code)."""
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    penalty, ngram = penalties["penalty"], penalties["ngram"]
    try:
        with torch.inference_mode():
            B = len(prompts)
            lengths = [len(p) for p in prompts]
            longest = max(lengths)
            extra = min(max_new_tokens, 64)  # grown as tokens come (see _grown)
            if left_pad:  # every prompt ends at column `longest`; `real` marks the pads
                history, real = left_padded(prompts, extra, device)
                first = longest
            else:  # prompts start at column 0; rows read the rest of theirs step by step
                width = longest + extra
                history = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=device)
                real, first = None, min(lengths)
            prompt_lens = torch.tensor(lengths, device=device)
            stop_ids = torch.tensor(stop_token_ids, dtype=torch.long, device=device)
            num_new = torch.zeros(B, dtype=torch.long, device=device)
            finished = torch.zeros(B, dtype=torch.bool, device=device)
            state = model.init_state(B, device)
            logits, state = feed(model, history, real, 0, first, state)  # prefill
            pos = window = first  # tokens in `history` / in the state
        while True:
            with torch.inference_mode():
                next_logits = logits[:, -1]  # (B, V)
                if penalty != 1.0:
                    next_logits = apply_repetition_penalty(next_logits, history[:, :pos], penalty)
                if ngram:
                    seen = None if real is None else real[:, :pos]
                    next_logits = no_repeat_ngram_filter(next_logits, history[:, :pos], ngram, seen)
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
                history, real = _grown(history, real, pos + 1)
                history[:, pos] = token
                pos += 1
                if context is not None and window == context:  # full: slide the window
                    state = model.init_state(B, device)
                    logits, state = feed(model, history, real, pos - context, pos, state)
                else:
                    logits, state = feed(model, history, real, pos - 1, pos, state)
                    window += 1
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- text in, text out


def _beam_texts(
    model, tokenizer, prompt_ids, max_new_tokens, stops, ids, num_return, beams, sampling
) -> list[str]:
    """The num_return best beams of each prompt as texts, prompt-major; sampling options other
    than no_repeat_ngram_size and device do not apply to beam search and are ignored.

    Args:
        ids: (stop token ids, ids left out of the text), as text_options gives them.
    """
    stop_ids, hidden = ids
    threads = sampling.get("threads")
    check_threads(threads)

    if sampling.get("repetition_penalty", 1.0) != 1.0:
        raise ConfigError(
            "repetition_penalty does not apply to beam search; use no_repeat_ngram_size instead"
        )

    def text_of(ids):
        return tokenizer.decode([t for t in ids if t not in hidden])

    def is_stopped(ids):
        text = text_of(ids)
        return any(s in text for s in stops)

    with decode_threads(threads or best_threads(model, beams["num_beams"])):
        results = beam_search(
            model,
            prompt_ids,
            max_new_tokens,
            num_return=num_return,
            no_repeat_ngram_size=sampling.get("no_repeat_ngram_size", 0),
            stop_token_ids=sorted(stop_ids),
            is_stopped=is_stopped if stops else None,
            device=sampling.get("device"),
            **beams,
        )
    return [
        _text_of(tokenizer, p, h.token_ids, stops, hidden)
        for p, beams_of_prompt in zip(prompt_ids, results)
        for h in beams_of_prompt
    ]


def _text_of(tokenizer, prompt_ids, new_ids, stops: list[str], hidden) -> str:
    """The whole text of new_ids after the prompt, as generate_text streams it (the space a word
    tokenizer puts after the prompt kept, cut before the first stop string)."""
    stream = TextStream(tokenizer, prompt_ids, stops, hidden)
    return "".join(stream.push(t) for t in new_ids) + stream.finish()


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    stop: Sequence[str] | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    **sampling,
) -> Iterator[str]:
    """Continue `prompt` and yield the new text in pieces as tokens come (one sample).

    Decoding is incremental over the whole output, so characters split across byte-level BPE
    tokens come out whole. Generation ends at the tokenizer's eos id (unless `stop_token_ids`
    says otherwise), after max_new_tokens, or at the first of the `stop` strings, which is not
    yielded. Other keyword arguments are generate()'s sampling options (temperature, top_k,
    top_p, min_p, repetition_penalty, no_repeat_ngram_size, stop_token_ids, seed, device,
    threads).
    With num_beams > 1 the best beam of a beam search (see `beam.beam_search` for
    length_penalty and early_stopping) comes out as one piece; sampling options are ignored.

    Example:
        for piece in generate_text(model, tok, "ROMEO:", max_new_tokens=200, stop=["\\n\\n"]):
            print(piece, end="", flush=True)
    """
    if sampling.get("num_samples", 1) != 1:
        raise ConfigError("generate_text makes one sample; use generate_texts(num_samples=N)")
    stops, stop_ids, hidden = text_options(tokenizer, stop, sampling)
    prompt_ids = encode_prompt(tokenizer, prompt)
    if num_beams != 1:
        beams = dict(
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping
        )
        texts = _beam_texts(
            model,
            tokenizer,
            [prompt_ids],
            max_new_tokens,
            stops,
            (stop_ids, hidden),
            1,
            beams,
            sampling,
        )
        return iter([t for t in texts if t])
    tokens = generate(model, prompt_ids, max_new_tokens, **sampling)
    return _stream_text(tokens, tokenizer, prompt_ids, stops, hidden)


def _stream_text(tokens, tokenizer, prompt_ids, stops, hidden) -> Iterator[str]:
    stream = TextStream(tokenizer, prompt_ids, stops, hidden)
    for step_ids in tokens:
        token = int(step_ids[0])
        if token == FINISHED:
            continue
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.stopped:
            return
    piece = stream.finish()
    if piece:
        yield piece


def generate_texts(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 200,
    stop: Sequence[str] | None = None,
    num_samples: int = 1,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    **sampling,
) -> list[str]:
    """Continue one or several prompts, num_samples times each; returns the new texts.

    The list is prompt-major (all samples of the first prompt, then the second, ...); each text
    ends before the first `stop` string or stop token. Prompts of different lengths are
    left-padded into one batch when the model allows it. With num_beams > 1, the num_samples
    best beams of each prompt, best first. Keyword arguments are as generate_text's.

    Example:
        texts = generate_texts(model, tok, "wine review :", num_samples=4, temperature=0.5, seed=1)
        best = generate_texts(model, tok, ["Why is", "How do"], num_beams=4, stop=["\\n"])
    """
    stops, stop_ids, hidden = text_options(tokenizer, stop, sampling)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    if num_beams != 1:
        beams = dict(
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping
        )
        return _beam_texts(
            model,
            tokenizer,
            prompt_ids,
            max_new_tokens,
            stops,
            (stop_ids, hidden),
            num_samples,
            beams,
            sampling,
        )
    sampling.setdefault("left_pad", takes_padding_mask(model))
    steps = generate(model, prompt_ids, max_new_tokens, num_samples=num_samples, **sampling)
    rows: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]  # checked above
    # the texts come out together at the end: a bar (when progress is on) shows the steps meanwhile
    with progress.bar(max_new_tokens, f"{len(rows)} samples", "step", leave=False) as bar:
        for step_ids in steps:
            for row, token in zip(rows, step_ids.tolist()):
                if token != FINISHED and token not in hidden:
                    row.append(token)
            bar.update(1)
    return [
        _text_of(tokenizer, prompt_ids[i // num_samples], row, stops, hidden)
        for i, row in enumerate(rows)
    ]
