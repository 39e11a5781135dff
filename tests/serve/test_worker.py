"""The engine thread: cancelling one sequence (running or queued) never touches another, a
consumer that stops reading is cancelled, and stop() ends everything with "cancelled"."""

import asyncio
import contextlib
import time

from lmforge.generation.engine import Engine, SamplingParams
from lmforge.serve.worker import EngineWorker
from tests.serve.conftest import alone

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


async def _drain(queue, count, on_delta=lambda d: None) -> dict:
    """index -> (tokens, text, finish_reason) once `count` sequences have ended."""
    out = {}
    while len([v for v in out.values() if v[2]]) < count:
        d = await asyncio.wait_for(queue.get(), 30)
        on_delta(d)
        tokens, text, _ = out.get(d.index, (0, "", None))
        out[d.index] = (tokens + d.num_tokens, text + d.text, d.finish_reason or d.error)
    return out


def test_cancelling_one_running_and_one_queued_leaves_the_others_alone(loaded):
    engine = Engine(loaded.model, slots=2, tokenizer=loaded.tokenizer)
    worker = EngineWorker(engine)
    worker.start()

    async def main():
        queue = asyncio.Queue()
        params = SamplingParams(max_new_tokens=40, temperature=0)
        seqs = [worker.submit(p, params, queue, i) for i, p in enumerate(PROMPTS)]
        worker.cancel(seqs[3])  # queued behind two slots

        def cancel_the_first_once_it_runs(d):
            if d.index == 0 and d.num_tokens:
                worker.cancel(seqs[0])

        return await _drain(queue, 4, cancel_the_first_once_it_runs)

    try:
        out = asyncio.run(main())
    finally:
        worker.stop()
    assert out[0][2] == "cancelled" and out[0][0] < 40
    assert out[3] == (0, "", "cancelled")
    for i in (1, 2):
        text, handle = alone(
            loaded, PROMPTS[i], max_new_tokens=40, temperature=0, stop_token_ids=()
        )
        assert out[i] == (len(handle.tokens), text, handle.finish_reason)
    assert worker.running == 0 and worker.waiting == 0


def test_a_consumer_that_stops_reading_is_cancelled_and_stop_ends_the_rest(loaded):
    engine = Engine(loaded.model, slots=2, tokenizer=loaded.tokenizer)
    worker = EngineWorker(engine, max_backlog=32)
    worker.start()
    endless = SamplingParams(max_new_tokens=10**6, temperature=0)  # slides past the context

    async def main():
        stalled, other = asyncio.Queue(), asyncio.Queue()
        worker.submit(PROMPTS[0], endless, stalled)
        worker.submit(PROMPTS[1], endless, other)
        deadline = time.monotonic() + 30
        while worker.running != 1:  # `other` is read, `stalled` never: it gets cancelled
            assert time.monotonic() < deadline, "the stalled sequence was never cancelled"
            with contextlib.suppress(TimeoutError):  # read each delta as soon as it comes
                await asyncio.wait_for(other.get(), 0.05)
        worker.stop()
        await asyncio.sleep(0.1)  # the last deltas were handed over with call_soon_threadsafe
        return [[q.get_nowait() for _ in range(q.qsize())] for q in (stalled, other)]

    stalled, other = asyncio.run(main())
    # cancelled at a backlog of 32 (plus the deltas still on their way to the event loop)
    assert stalled[-1].finish_reason == "cancelled" and len(stalled) < 100
    assert other[-1].finish_reason == "cancelled"  # stop() cancelled the one still running
