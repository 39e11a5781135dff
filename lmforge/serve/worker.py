"""The engine thread: one thread owns the Engine (it is not thread-safe) and steps it while there
is work; the asyncio side submits and cancels through thread-safe calls and reads Deltas.

Each step the thread admits new sequences, applies cancels (so a cancelled sequence's slot is
free at the next step), steps the engine and hands every sequence its new text, tokens and
log-probabilities with `loop.call_soon_threadsafe`. A consumer that stops reading (more than
`max_backlog` undelivered deltas) is cancelled like one that hung up.
"""

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.generation.engine import Engine, Handle, SamplingParams, TokenLogprob

log = logging.getLogger("lmforge.serve")


@dataclass
class Delta:
    """What sequence `index` gained since its last delta; the last one has `finish_reason`
    ("stop", "length", "cancelled") or `error` (a message, the sequence ended)."""

    index: int = 0
    text: str = ""
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class Sequence:
    """One engine request seen from the event loop; its Deltas go to `queue` (several sequences
    of one HTTP request share one queue, told apart by Delta.index)."""

    def __init__(self, prompt: list[int], params: SamplingParams, queue: asyncio.Queue, index: int):
        self.prompt, self.params, self.queue, self.index = prompt, params, queue, index
        self.loop = asyncio.get_running_loop()
        self.cancel_requested = False
        self.handle: Handle | None = None
        self.completion_tokens = 0  # delivered so far
        self._sent_text = self._sent_logprobs = 0

    def _deliver(self, delta: Delta) -> None:
        delta.index = self.index
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class EngineWorker:
    """Runs `engine` in a daemon thread. `submit` and `cancel` are called from the event loop.

    Example:
        worker = EngineWorker(Engine(model, slots=8, tokenizer=tok)); worker.start()
        queue = asyncio.Queue()
        worker.submit(prompt_ids, SamplingParams(max_new_tokens=20), queue)
        while not (delta := await queue.get()).is_last: print(delta.text)
        worker.stop()
    """

    def __init__(self, engine: Engine, max_backlog: int = 256):
        self.engine, self.max_backlog = engine, max_backlog
        self.running = 0  # sequences holding a slot, as of the last step
        self.waiting = 0  # sequences waiting for one
        self._cond = threading.Condition()
        self._inbox: list[Sequence] = []
        self._active: list[Sequence] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every sequence and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(
        self, prompt: list[int], params: SamplingParams, queue: asyncio.Queue, index: int = 0
    ) -> Sequence:
        """Queue a sequence (from the event loop); its Deltas go to `queue`."""
        seq = Sequence(prompt, params, queue, index)
        with self._cond:
            if self._stopping:
                raise LmforgeError("the server is shutting down")
            self._inbox.append(seq)
            self.waiting += 1
            self._cond.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Ask for `seq` to end; its slot is free by the next step. Safe to call twice."""
        with self._cond:
            seq.cancel_requested = True
            self._cond.notify()

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._active or self._stopping):
                    self._cond.wait()
                new, self._inbox = self._inbox, []
                stopping = self._stopping
            for seq in new:
                self._admit(seq)
            for seq in self._active:
                backlog = seq.queue.qsize() > self.max_backlog
                if stopping or seq.cancel_requested or backlog:
                    seq.handle.cancel()
            if self.engine.has_work and not stopping:
                try:
                    self.engine.step()
                except Exception as e:  # a bug or an accelerator failure: end every sequence
                    log.info("engine step failed: %s: %s", type(e).__name__, e)
                    log.debug("engine step failed", exc_info=True)
                    for seq in self._active:
                        seq.handle.cancel()
                        seq._deliver(Delta(error="generation failed inside the server"))
                    self._active = []
            self._deliver_all()
            if stopping:
                return

    def _admit(self, seq: Sequence) -> None:
        if seq.cancel_requested:
            seq._deliver(Delta(finish_reason="cancelled"))
            return
        try:
            seq.handle = self.engine.submit(seq.prompt, seq.params)
        except LmforgeError as e:
            seq._deliver(Delta(error=str(e)))
            return
        self._active.append(seq)

    def _deliver_all(self) -> None:
        still = []
        for seq in self._active:
            h = seq.handle
            new_tokens = len(h.tokens) - seq.completion_tokens
            if new_tokens or h.finished:
                seq.completion_tokens = len(h.tokens)
                delta = Delta(
                    text=h.text[seq._sent_text :],
                    num_tokens=new_tokens,
                    logprobs=h.logprobs[seq._sent_logprobs :],
                    finish_reason=h.finish_reason,
                )
                seq._sent_text, seq._sent_logprobs = len(h.text), len(h.logprobs)
                seq._deliver(delta)
            if not h.finished:
                still.append(seq)
        self._active = still
        running = sum(1 for seq in still if seq.handle.slot is not None)
        with self._cond:
            self.running = running
            self.waiting = len(self._inbox) + len(still) - running
