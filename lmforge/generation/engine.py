"""The decode engine: many streams at once over a cache allocated once (continuous batching).

An Engine owns a model and its slot state: for a GPT one (slots, heads, max_len, head_dim) KV
cache per layer, for a char RNN its (h, c) per slot, allocated when the engine is made and only
written in place afterwards. `submit()` queues a prompt and returns a Handle; each `step()`

1. frees the slots of cancelled sequences and gives free slots to waiting ones,
2. runs ONE forward over every token the step reads, packed in one sequence (vLLM's and TGI's
   chunked prefill mixed with decode): each running sequence's last token at its own position
   (one group of rows), then the prompt chunks of joined sequences (a group each), at most
   `prefill_chunk` prompt tokens in all, first come first read, so a step's time stays bounded
   and running streams keep their pace while several prompts join at once (on the CPU, more
   than a few prompt tokens are read in a step of their own, the decoding rows waiting that
   one step, never two in a row: `prefill_first`, so a joiner's first token comes sooner);
3. samples the next token of every decoding row and of every prompt read to its end, per row
   (each with its own options and seeded generator); the LM head runs on those rows only.

Design notes. The linear layers read their weights once for all the step's tokens (a decode
step is bound by reading them); attention goes group by group over the slot caches (SlotBatch).
On the CPU the engine readies float32 Linear layers for steps of a few rows (layers/layout.py):
up to 8 rows run in lmforge's small-rows kernel (layers/cpu_kernels.py), which reads each weight
once for all of them near memory speed, where MKL's matmul gets about half of it (GPT-2 small on
an AMX Xeon: a step of 8 rows took 2.0-2.2x one row's time with MKL, 1.5x with the kernel). The
cache is allocated once and written in place.

It talks to a model through `slot_bytes`, `init_slots`, `step_slots` and, where the model packs
rows of different lengths in one forward, `step_slot_groups` (GPT and Llama; a char RNN runs
its groups one after another); the model never sees a request. Past the context a sequence
re-reads its last max_len tokens from position 0, as generate() does. Beam search (beam.py)
keeps its own slots on an engine with no request: `forward_slots` and `copy_slots`.

Example:
    engine = Engine(model, slots=4)
    a = engine.submit([5, 17, 3], SamplingParams(max_new_tokens=20, temperature=0))
    b = engine.submit([9, 2], SamplingParams(max_new_tokens=20, seed=1, top_p=0.9))
    for token in a:  # iterating a handle steps the engine: b advances too
        print(token)
    print(a.finish_reason, b.tokens)
"""

import itertools
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.generation.prompts import crop_prompts, model_device
from lmforge.generation.sampling import (
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    check_sampling,
    no_repeat_ngram_filter,
    sample_next_token,
)
from lmforge.generation.text import TextStream, text_options
from lmforge.layers.layout import decode_layout_
from lmforge.system import available_memory_bytes, usable_cpus

FINISH_REASONS = ("stop", "length", "cancelled")


def slots_that_fit(model, slots: int, max_len: int | None, device) -> tuple | None:
    """None when `slots` slots of the model's state fit in free memory; else (how many fit,
    "N slots of L positions need X GiB of cache but only Y GiB is free", the max_len advice)."""
    needed = model.slot_bytes(slots, max_len)
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory_bytes()
    if free is None or needed <= free:
        return None
    fit = max(1, free // max(1, math.ceil(needed / slots)))
    positions = "" if max_len is None else f" of {max_len} positions"
    problem = (
        f"{slots} slots{positions} need {needed / 2**30:.1f} GiB of cache but only "
        f"{free / 2**30:.1f} GiB is free"
    )
    return fit, problem, "" if max_len is None else " or a smaller max_len"


_best_threads: dict[tuple, int] = {}  # (model shape, int8 kernel, rows) -> threads, per process


def best_threads(model, rows: int = 1) -> int:
    """The intra-op thread count that decodes `model` fastest here, 1 or every usable core.

    One decode step of `rows` rows (1, or 8 standing for any batch) is timed at both counts,
    alternated, best of three each; all cores must win by 5% (on a tie fewer threads leave cores
    to others). Cached per process per model shape, so a process probes a model once.
    A tiny model often decodes faster on one thread: its steps are too short to share.
    """
    most = usable_cpus()
    device = model_device(model)
    if most == 1 or device.type != "cpu" or not hasattr(model, "step_slots"):
        return 1 if most == 1 else torch.get_num_threads()
    rows = 1 if rows <= 1 else 8
    tensors = [*model.parameters(), *model.buffers()]
    if not tensors:  # nothing to read: nothing to share between threads
        return 1
    shape = (type(model).__name__, sum(t.numel() for t in tensors), str(tensors[0].dtype))
    key = (shape, getattr(model, "int8_kernel", None), rows)
    if key not in _best_threads:
        _best_threads[key] = _probe_threads(model, rows, most, device)
    return _best_threads[key]


def _probe_threads(model, rows: int, most: int, device) -> int:
    ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
    best = {1: math.inf, most: math.inf}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        state = model.init_slots(rows, 2, device)
        for trial in range(4):  # the first round warms up and is not counted
            for threads in best:
                with decode_threads(threads):
                    start = time.perf_counter()
                    model.step_slots(ids, state, list(range(rows)), [0] * rows)
                    seconds = time.perf_counter() - start
                if trial:
                    best[threads] = min(best[threads], seconds)
    model.train(was_training)
    return most if best[most] < 0.95 * best[1] else 1


@contextmanager
def decode_threads(threads: int):
    """Run the block on `threads` intra-op threads, then give torch back its count."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def check_threads(threads) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"threads={threads!r} must be an integer >= 1; leave it out (no --threads) to pick "
            "the fastest count automatically"
        )


@dataclass
class SamplingParams:
    """How one request is decoded; checked when made (values come from users and requests).

    temperature 0 is greedy; top_k, top_p, min_p filter after it (None = off). stop_token_ids end
    the sequence and are returned; `stop` strings end it at the character where they start and
    are not returned (they need an engine made with a tokenizer). `seed` gives the request its
    own generator: the same tokens alone or beside others. `logprobs=n` records, per token, its
    log-probability and the n most probable tokens' (n = 0: the chosen token's only).
    """

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_token_ids: Sequence[int] = ()
    stop: Sequence[str] = ()
    seed: int | None = None
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        check_sampling(
            self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty
        )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be between -2 and 2")
        for name in ("max_new_tokens", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be an integer >= 0")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ConfigError(f"logprobs={self.logprobs!r} must be an integer >= 0 or None")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop if s)


@dataclass
class TokenLogprob:
    """One new token's log-probability under the model, and the `top` most probable tokens'
    (id, log-probability), most probable first."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class Handle:
    """One submitted request: its tokens as they come, and how it ended.

    Iterating yields each new token once, stepping the engine while none is ready, until the
    request ends; `finish_reason` is then "stop", "length" or "cancelled". `text` holds the text
    released so far (an engine made with a tokenizer), `logprobs` one TokenLogprob per token
    when the params asked for them.
    """

    def __init__(self, engine: "Engine", request_id: int, prompt: list[int], params):
        self.engine, self.id, self.params = engine, request_id, params
        self.prompt = prompt
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._stream: TextStream | None = None
        # engine bookkeeping: what the slot holds and what it must read next
        self.slot: int | None = None
        self.pending: list[int] = list(prompt)  # tokens still to feed before the next sample
        self.position = 0  # tokens in the slot
        self.generator = None
        if params.seed is not None:
            device = engine.device
            self.generator = torch.Generator(device=device).manual_seed(params.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """End the request; its slot is free for another at the next step."""
        if not self.finished:
            self.finish_reason = "cancelled"

    def __iter__(self) -> Iterator[int]:
        sent = 0
        while True:
            while sent < len(self.tokens):
                sent += 1
                yield self.tokens[sent - 1]
            if self.finished:
                return
            self.engine.step()

    def texts(self) -> Iterator[str]:
        """The text in pieces as it is released (an engine made with a tokenizer)."""
        if self._stream is None:
            raise ConfigError("this engine has no tokenizer; make it with Engine(..., tokenizer=)")
        sent = 0
        for _ in self:
            if len(self.text) > sent:
                yield self.text[sent:]
                sent = len(self.text)
        if len(self.text) > sent:
            yield self.text[sent:]


# Prompt tokens past which a step reads them alone when prefill_first: up to this many rows in
# all, the step reads every weight once for them at memory speed (the small-rows kernel's reach).
PREFILL_FIRST_TOKENS = 8


class Engine:
    """Decode many requests at once on one model (see the module docstring).

    Args:
        slots: sequences decoded side by side; more wait in a queue.
        max_len: positions per slot (defaults to the model's max_seq_len, which caps it; none
            for an RNN). Longer sequences slide: the last max_len tokens are read again.
        prefill_chunk: most prompt tokens read in one step, all joining sequences together (a
            longer prompt reads on at the next steps, beside the decoding rows).
        tokenizer: for stop strings and `Handle.text`; special tokens stay out of the text.
        threads: intra-op threads while a step runs (torch's count is restored after it);
            None picks `best_threads(model, rows)` for the rows decoding.
        prefill_first: a step that reads more than PREFILL_FIRST_TOKENS prompt tokens reads
            them alone, the decoding rows waiting that one step (never two in a row); None: on
            the CPU only. There a step's prompt rows are bound by arithmetic, so decoding rows
            beside them cost as much time as in a step of their own, and the joiners' first
            tokens would wait for it (GPT-2 small, an AMX Xeon: a 26-token prompt read alone
            47 ms, beside 7 decoding rows 72; through the server, time to first token with 8
            streams p50 / p99 107 / 209 ms -> 82-87 / 181-182).
    """

    def __init__(
        self,
        model,
        slots: int = 8,
        max_len: int | None = None,
        prefill_chunk: int = 256,
        tokenizer=None,
        device: torch.device | str | None = None,
        threads: int | None = None,
        prefill_first: bool | None = None,
    ):
        if not hasattr(model, "step_slots"):
            raise ConfigError(
                f"{type(model).__name__} cannot run on the engine: it needs a causal LM with "
                "step_slots() (the GPT and char-RNN families)"
            )
        for name, value in (("slots", slots), ("prefill_chunk", prefill_chunk)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        context = getattr(model.config, "max_seq_len", None)
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ConfigError(f"max_len={max_len!r} must be an integer >= 1 or None")
        if context is not None:
            max_len = context if max_len is None else min(max_len, context)
        check_threads(threads)
        self.model, self.slots, self.max_len = model, slots, max_len
        self.threads = threads
        self._auto: dict[bool, int] = {}  # batched? -> best_threads, asked once per engine
        self.prefill_chunk = prefill_chunk
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else model_device(model)
        self.prefill_first = self.device.type == "cpu" if prefill_first is None else prefill_first
        self._decoding_waited = False  # the last step read prompts alone while rows decoded
        self._check_memory()
        if self.device.type == "cpu":
            decode_layout_(model)  # steps of a few rows: the small-rows kernel
        with torch.inference_mode():
            self.state = model.init_slots(slots, max_len, self.device)
        self._free = list(range(slots))  # lowest first: running slots stay side by side
        self._waiting: deque[Handle] = deque()
        self._running: dict[int, Handle] = {}  # slot -> handle
        self._ids = itertools.count()

    def _check_memory(self) -> None:
        fit = slots_that_fit(self.model, self.slots, self.max_len, self.device)
        if fit is not None:
            raise ConfigError(f"{fit[1]}; pass slots={fit[0]} or fewer" + fit[2])

    # ------------------------------------------------------------ requests

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Handle:
        """Queue a request; it joins at the next step with a free slot. A prompt longer than
        max_len keeps its last max_len tokens (with one warning)."""
        params = params if params is not None else SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ConfigError("the prompt is empty; give at least one token id")
        vocab = self.model.config.vocab_size
        if not all(0 <= t < vocab for t in prompt):
            raise ConfigError(
                f"the prompt has token ids outside 0..{vocab - 1}; "
                "encode it with the model's tokenizer"
            )
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop strings need a tokenizer: make the engine with tokenizer=")
        prompt = crop_prompts([prompt], self.max_len)[0]
        handle = Handle(self, next(self._ids), prompt, params)
        if self.tokenizer is not None:
            stop, sampling = list(params.stop), {"stop_token_ids": params.stop_token_ids}
            stops, _, hidden = text_options(self.tokenizer, stop, sampling)
            handle._stream = TextStream(self.tokenizer, prompt, stops, hidden)
        if params.max_new_tokens == 0:
            handle.finish_reason = "length"
        else:
            self._waiting.append(handle)
        return handle

    @property
    def has_work(self) -> bool:
        """True while a request waits or runs."""
        return bool(self._waiting or self._running)

    def run(self) -> None:
        """Step until every request has ended."""
        while self.has_work:
            self.step()

    # ------------------------------------------------------------ the step

    def step(self) -> None:
        """Admit; in one forward, decode one token for every running sequence and read the next
        prompt chunks of joined ones (prefill_chunk tokens at most)."""
        self._release_finished()
        while self._free and self._waiting:
            handle = self._waiting.popleft()
            if handle.finished:  # cancelled while waiting
                continue
            handle.slot = self._free.pop(0)
            self._running[handle.slot] = handle
        running = list(self._running.values())
        for handle in running:
            if not handle.pending and handle.position == self.max_len:
                # the slot is full: read the last max_len tokens again, from position 0
                handle.pending = (handle.prompt + handle.tokens)[-self.max_len :]
                handle.position = 0
        decoding = [h for h in running if not h.pending]
        chunks, budget = [], self.prefill_chunk  # first come, first read
        for handle in running:
            if handle.pending and budget:
                chunks.append((handle, handle.pending[:budget]))
                budget -= len(chunks[-1][1])
        prompt_tokens = self.prefill_chunk - budget
        wait = self.prefill_first and decoding and prompt_tokens > PREFILL_FIRST_TOKENS
        if wait and not self._decoding_waited:
            decoding = []  # read the prompts alone: the decoding rows get their token next step
        self._decoding_waited = bool(wait) and not decoding
        was_training = self.model.training  # .eval() walks every module: only when needed
        if was_training:
            self.model.eval()
        try:
            tokens = len(decoding) + sum(len(chunk) for _, chunk in chunks)  # rows of the GEMMs
            threads = self.threads or self._auto_threads(tokens)
            with torch.inference_mode(), decode_threads(threads):
                self._forward(decoding, chunks)
        finally:
            if was_training:
                self.model.train()
        self._release_finished()

    def pick_threads(self) -> None:
        """Choose the thread counts of one stream and of batched steps now (a probe of a few
        decode steps each) instead of at the first step that needs them: a server does it while
        loading, so no request waits for the probe."""
        if self.threads is None:
            for rows in (1, min(self.slots, 8)):
                self._auto_threads(rows)

    def _auto_threads(self, rows: int) -> int:
        if (rows > 1) not in self._auto:
            self._auto[rows > 1] = best_threads(self.model, rows)
        return self._auto[rows > 1]

    def _release_finished(self) -> None:
        for slot in [s for s, h in self._running.items() if h.finished]:
            del self._running[slot]
            self._free.append(slot)
        self._free.sort()

    def _forward(self, decoding: list[Handle], chunks: list[tuple[Handle, list[int]]]) -> None:
        """One forward for the step: every decoding handle's last token at its own position
        (one group of rows), then each prompt chunk (a group of one row each); sample a token
        for every decoding handle and every prompt read to its end."""
        if not (decoding or chunks):
            return
        groups, handles = [], sorted(decoding, key=lambda h: h.slot)
        picked = list(range(len(handles)))
        if handles:
            rows = [h.slot for h in handles]
            starts = [h.position for h in handles]
            tokens = [h.tokens[-1] for h in handles]
            if (
                getattr(self.model, "slot_span_is_a_view", False)
                and len(rows) < rows[-1] - rows[0] + 1
            ):
                # Read one span of slots side by side as a view of the cache (a gather would
                # copy it at every layer). A slot in the span that is not decoding gets a dummy
                # token at its next position: a free slot is overwritten when it is taken, a
                # prefilling one by its next chunk (a later group of this forward, or of a later
                # one when the step's prompt budget is spent) before anything reads it.
                picked = [slot - rows[0] for slot in rows]
                span = range(rows[0], rows[-1] + 1)
                owners = [self._running.get(slot) for slot in span]  # None: a free slot
                starts = [owner.position if owner else 0 for owner in owners]
                tokens = [owner.tokens[-1] if owner in handles else 0 for owner in owners]
                rows = list(span)
            groups.append((torch.tensor(tokens, device=self.device)[:, None], rows, starts))
        for handle, chunk in chunks:
            ids = torch.tensor([chunk], device=self.device)
            groups.append((ids, [handle.slot], [handle.position]))
        logits = self._step_groups(groups)
        for h in handles:
            h.position += 1
        read = len(groups[0][1]) if handles else 0  # rows of the decoding group
        for i, (handle, chunk) in enumerate(chunks):
            handle.position += len(chunk)
            handle.pending = handle.pending[len(chunk) :]
            if not handle.pending:
                handles.append(handle)
                picked.append(read + i)
        if handles:  # (the rows of logits in order: no gather)
            whole = picked == list(range(logits.shape[0]))
            self._emit(handles, logits if whole else logits[picked])

    # ------------------------------------------------------------ slots driven by the caller

    def forward_slots(self, groups: list[tuple[Tensor, list[int], list[int]]]) -> Tensor:
        """One forward over the slot state for a caller that places its rows itself (beam
        search; no request may run meanwhile): (token_ids (n, T), slots, start positions)
        groups, in that order -> logits (rows of every group, V) of each row's last token."""
        threads = self.threads or self._auto_threads(sum(ids.numel() for ids, _, _ in groups))
        with torch.inference_mode(), decode_threads(threads):
            return self._step_groups(groups)

    def copy_slots(self, src_rows: list[int], dst_rows: list[int], length: int | None) -> None:
        """Slot dst_rows[i] takes slot src_rows[i]'s state (its first `length` positions), in
        place; no slot may be both a source and a destination."""
        if dst_rows:
            with torch.inference_mode():
                self.model.copy_slots(self.state, src_rows, dst_rows, length)

    def _step_groups(self, groups: list) -> Tensor:
        """The model's logits (rows, V) of each group's rows' last tokens: in one forward where
        it can (step_slot_groups), else one step_slots call per group (a char RNN)."""
        if hasattr(self.model, "step_slot_groups"):
            return self.model.step_slot_groups(groups, self.state)
        parts = [
            self.model.step_slots(ids, self.state, rows, starts) for ids, rows, starts in groups
        ]
        return torch.cat([part[:, -1] for part in parts])

    # ------------------------------------------------------------ sampling

    def _emit(self, handles: list[Handle], logits: Tensor) -> None:
        """Sample each handle's next token from its (V,) row of logits and record it."""
        logits = logits.float()
        raw = logits
        greedy = None  # argmax of every row at once, when a row asks for it
        for i, handle in enumerate(handles):
            p = handle.params
            row = logits[i : i + 1]
            if p.repetition_penalty != 1.0 or p.no_repeat_ngram_size:
                history = torch.tensor([handle.prompt + handle.tokens], device=row.device)
                row = apply_repetition_penalty(row, history, p.repetition_penalty)
                if p.no_repeat_ngram_size:
                    row = no_repeat_ngram_filter(row, history, p.no_repeat_ngram_size)
            penalized = bool(p.presence_penalty or p.frequency_penalty)
            if penalized:
                generated = torch.tensor([handle.tokens], dtype=torch.long, device=row.device)
                row = apply_presence_frequency_penalty(
                    row, generated, p.presence_penalty, p.frequency_penalty
                )
            if (
                p.temperature == 0
                and p.repetition_penalty == 1.0
                and not p.no_repeat_ngram_size
                and not penalized
            ):
                if greedy is None:  # (max's indices: the first maximum, as argmax's, in 60%
                    greedy = logits.max(-1).indices.tolist()  # of its time for 50k logits)
                token = greedy[i]
            else:
                options = (p.temperature, p.top_k, p.top_p, p.min_p)
                token = int(sample_next_token(row, *options, generator=handle.generator))
            self._record(handle, token, raw[i])

    def _record(self, handle: Handle, token: int, logits: Tensor) -> None:
        p = handle.params
        if p.logprobs is not None:
            logprobs = logits.log_softmax(-1)
            top = logprobs.topk(min(p.logprobs, logprobs.shape[-1])) if p.logprobs else None
            handle.logprobs.append(
                TokenLogprob(
                    token,
                    float(logprobs[token]),
                    [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())),
                )
            )
        handle.tokens.append(token)
        if handle._stream is not None:
            handle.text += handle._stream.push(token)
            if handle._stream.stopped:
                handle.finish_reason = "stop"
                return
        if token in p.stop_token_ids:
            handle.finish_reason = "stop"
        elif len(handle.tokens) >= p.max_new_tokens:
            handle.finish_reason = "length"
        if handle.finished and handle._stream is not None:
            handle.text += handle._stream.finish()
