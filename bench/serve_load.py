"""Load on `lmforge serve`: a GPT-2-small-shaped model (random weights; GPT-2's 50,257-token
vocabulary as a byte-level BPE trained on seeded random words; nothing downloaded) served by
`python -m lmforge serve` in a subprocess on a free loopback port, so its resident memory and
threads are its own; clients are the `openai` package's, streaming over HTTP. One run reports:

- server_overhead: one streamed request's tokens/s through HTTP over the engine's own tokens/s
  for the same prompt and max tokens (in this process, the same weights; trials alternate);
- time to first token p50/p99 for 1 stream, and for 8 concurrent streams with Poisson arrivals
  (200 requests at exponential gaps, 7-8 streams in flight, 8 at most: a new stream mostly joins
  7 that are decoding); inter-token latency p50/p99;
- streams_held: 32 streams at once (8 slots + a queue of 24) complete without errors, and
  requests past the queue get 429 at once;
- rss_growth: the server's resident memory after 1,000 short requests, 20% of them disconnected
  mid-stream, over its memory after a warm-up round of the same; threads and gauges back to idle.

Every phase has a count and a time cap (a capped phase is listed in `truncated`). Run by hand:

    .venv/bin/python bench/serve_load.py --json
    .venv/bin/python bench/serve_load.py --tiny --json   # a small model and counts: a smoke run
"""

import argparse
import asyncio
import itertools
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from _timing import machine_fields, print_row, use_all_cpus

from lmforge.presets import build_task, get_preset

# --tiny: the gpt2 preset's switches at a size that runs in seconds (a smoke run, not a number)
TINY = dict(vocab_size=1000, max_seq_len=256, embed_dim=64, num_heads=2, num_layers=2, ffn_dim=256)
NAME = "gpt2-shaped"
# Poisson arrivals per single stream's time: 7.5-7.7 streams in flight on average of the 8 (the
# closed-loop clients before them kept 6.8-6.9 with the same mean rate: now the gaps do not wait
# for streams to end)
ARRIVALS_PER_STREAM = 4.6


def make_folder(folder: Path, cfg: dict) -> int:
    """A Hugging Face folder of a random GPT with cfg's shape and a byte-level BPE whose
    vocabulary is exactly cfg's vocab_size; returns the parameter count."""
    from lmforge.interop.hf import write_hf_folder
    from lmforge.tokenizers.base import train_tokenizer

    rng = random.Random(0)
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(60_000)
    ]
    texts = [" ".join(words[i : i + 200]) for i in range(0, len(words), 200)]
    tok = train_tokenizer("bpe", texts, vocab_size=cfg["vocab_size"])
    if tok.vocab_size != cfg["vocab_size"]:
        raise RuntimeError(f"the BPE has {tok.vocab_size} tokens, not {cfg['vocab_size']}")
    torch.manual_seed(0)
    model = build_task("gpt", cfg).eval()
    write_hf_folder(model, tok, folder)
    return sum(p.numel() for p in model.parameters())


def prompt_text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(words))


# ---------------------------------------------------------------- the server process


class Server:
    """`python -m lmforge serve FOLDER` on a free loopback port, stopped on exit."""

    def __init__(self, folder: Path, slots: int, max_queue: int, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "lmforge", "serve", str(folder), "--port", str(self.port)]
        argv += ["--slots", str(slots), "--max-queue", str(max_queue), "--model-name", NAME]
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def __enter__(self):
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 180 s")
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def status(self) -> dict:
        """VmRSS (bytes) and Threads of the server process, from /proc."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"])}

    def gauges(self) -> dict:
        """lmforge_requests_running and _waiting from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            if family.name in ("lmforge_requests_running", "lmforge_requests_waiting"):
                out[family.name.rsplit("_", 1)[1]] = family.samples[0].value
        return out


# ---------------------------------------------------------------- clients


async def stream(client, prompt: str, max_tokens: int, seed: int, hang_up_after: int | None = None):
    """One streamed completion: {"ttft", "gaps", "tokens", "total", "error"} (seconds)."""
    import openai

    start = time.perf_counter()
    out = {"ttft": None, "gaps": [], "tokens": 0, "total": None, "error": None, "status": None}
    last = None
    try:
        response = await client.completions.create(
            model=NAME, prompt=prompt, max_tokens=max_tokens, seed=seed, stream=True
        )
        async for chunk in response:
            if not chunk.choices or not chunk.choices[0].text:
                continue
            now = time.perf_counter()
            if last is None:
                out["ttft"] = now - start
            else:
                out["gaps"].append(now - last)
            last = now
            out["tokens"] += 1
            if hang_up_after is not None and out["tokens"] >= hang_up_after:
                await response.close()  # the client goes away mid-stream
                break
        out["total"] = (last or time.perf_counter()) - start
    except openai.APIStatusError as e:
        out["status"], out["error"] = e.status_code, str(e)
        out["total"] = time.perf_counter() - start
    except openai.APIError as e:
        out["error"] = str(e)
    return out


def quantiles(values, *qs) -> list[float | None]:
    return [float(np.percentile(values, q)) if len(values) else None for q in qs]


def engine_tokens_per_s(engine, prompt: str, max_tokens: int) -> float:
    """The engine alone, for the same prompt and max tokens as one HTTP request."""
    from lmforge.generation.engine import SamplingParams

    tok = engine.tokenizer
    t = time.perf_counter()
    handle = engine.submit(
        tok.encode(prompt),
        SamplingParams(max_new_tokens=max_tokens, seed=0, stop_token_ids=(tok.eos_id,)),
    )
    for _ in handle.texts():
        pass
    return len(handle.tokens) / (time.perf_counter() - t)


async def overhead(client, loaded, args) -> dict:
    """HTTP and the engine alone, alternating, `trials` each after one untimed run of each."""
    from lmforge.generation.engine import Engine

    # one engine for every trial, as the server keeps one: its cache is allocated and touched
    engine = Engine(loaded.model, slots=args.slots, tokenizer=loaded.tokenizer)
    prompt = prompt_text(1, 12)
    http, alone = [], []
    for trial in range(args.trials + 1):
        r = await stream(client, prompt, args.new_tokens, seed=0)
        if r["error"]:
            raise RuntimeError(f"an overhead request failed: {r['error']}")
        e = engine_tokens_per_s(engine, prompt, args.new_tokens)
        if trial:  # the first of each warms up
            http.append(r["tokens"] / r["total"])
            alone.append(e)
    h, a = float(np.median(http)), float(np.median(alone))
    return {"http_tokens_per_s": h, "engine_tokens_per_s": a, "server_overhead": h / a}


async def latency(client, args, truncated: list) -> dict:
    """TTFT and inter-token gaps of single streams, then of 8 clients with Poisson arrivals."""
    singles, deadline = [], time.monotonic() + args.cap
    for i in range(args.singles):
        if time.monotonic() > deadline:
            truncated.append("ttft_1")
            break
        singles.append(await stream(client, prompt_text(100 + i, 12), args.new_tokens, seed=i))
    # Poisson arrivals: one stream of requests with exponential gaps, drawn in advance and so
    # independent of when streams end, served by 8 clients (at most 8 streams at once; a request
    # that finds all 8 busy starts when one ends). The rate keeps 7-8 streams in flight (a mean
    # gap of a single stream's time over ARRIVALS_PER_STREAM; streams run ~1.5x slower among 8).
    # Before, each of 8 clients paused an exponential time after its own stream: streams that
    # started in one step ended in one step, so their next requests came in bursts of 3-5, not
    # at Poisson's random moments, and the slowest first tokens were those of a burst's last.
    gap = float(np.mean([r["total"] for r in singles])) / ARRIVALS_PER_STREAM
    rng, clients = random.Random(0), asyncio.Semaphore(8)
    arrivals = list(itertools.accumulate(rng.expovariate(1 / gap) for _ in range(8 * args.poisson)))
    poisson, deadline, started = [], time.monotonic() + args.cap, time.perf_counter()

    async def request(k: int, at: float):
        await asyncio.sleep(at - (time.perf_counter() - started))
        async with clients:
            if time.monotonic() > deadline:
                return
            i = 1000 + k
            poisson.append(await stream(client, prompt_text(i, 12), args.new_tokens, seed=i))

    await asyncio.gather(*[request(k, at) for k, at in enumerate(arrivals)])
    if len(poisson) < 8 * args.poisson:
        truncated.append("ttft_8")
    in_flight = sum(r["total"] for r in poisson) / (time.perf_counter() - started)
    errors = [r["error"] for r in singles + poisson if r["error"]]
    if errors:
        raise RuntimeError(f"{len(errors)} latency requests failed, e.g. {errors[0]}")
    ttft1 = quantiles([r["ttft"] for r in singles], 50, 99)
    ttft8 = quantiles([r["ttft"] for r in poisson], 50, 99)
    itl1 = quantiles([g for r in singles for g in r["gaps"]], 50, 99)
    itl8 = quantiles([g for r in poisson for g in r["gaps"]], 50, 99)
    return {
        "ttft_p50_1_s": ttft1[0],
        "ttft_p99_1_s": ttft1[1],
        "ttft_p50_8_s": ttft8[0],
        "ttft_p99_8_s": ttft8[1],
        "ttft_p99_8_over_p50_1": ttft8[1] / ttft1[0],
        "itl_p50_1_s": itl1[0],
        "itl_p99_1_s": itl1[1],
        "itl_p50_8_s": itl8[0],
        "itl_p99_8_s": itl8[1],
        "poisson_mean_gap_s": gap,
        "poisson_requests": len(poisson),
        "poisson_mean_in_flight": in_flight,
    }


async def held(client, server: Server, args, truncated: list) -> dict:
    """`streams` streams at once; once all are admitted, `extra` more must get 429 at once."""
    tasks = [
        asyncio.create_task(stream(client, prompt_text(5000 + i, 12), args.new_tokens, seed=i))
        for i in range(args.streams)
    ]
    deadline = time.monotonic() + args.cap
    while True:  # every stream holds a slot or a queue place
        g = await asyncio.to_thread(server.gauges)
        if g.get("running", 0) + g.get("waiting", 0) >= args.streams or time.monotonic() > deadline:
            break
        if all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.02)
    extra = await asyncio.gather(
        *[stream(client, prompt_text(9000 + i, 12), 4, seed=i) for i in range(args.extra)]
    )
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.monotonic()))
    for t in pending:
        t.cancel()
    if pending:
        truncated.append("streams_held")
    results = [t.result() for t in done]
    ok = [r for r in results if not r["error"] and r["tokens"] > 0]
    return {
        "streams": args.streams,
        "streams_held": len(ok),
        "stream_errors": len(results) - len(ok),
        "streams_cut_by_cap": len(pending),
        "past_queue": args.extra,
        "past_queue_429": sum(r["status"] == 429 for r in extra),
        "past_queue_max_s": max((r["total"] for r in extra), default=None),
    }


async def memory(client, server: Server, args, truncated: list) -> dict:
    """A warm-up round, then `requests` short ones (every 5th hung up after its first token)
    from 8 clients; the server's RSS and threads before and after, and its gauges once idle."""

    async def round_of(count: int, offset: int, deadline: float) -> dict:
        next_i, n = iter(range(count)), {"done": 0, "errors": 0, "hung_up": 0}

        async def client_loop():
            for i in next_i:
                if time.monotonic() > deadline:
                    return
                hang_up = 1 if i % 5 == 4 else None
                r = await stream(
                    client, prompt_text(offset + i, 6), 8, seed=i, hang_up_after=hang_up
                )
                n["done"] += 1
                n["errors"] += r["error"] is not None
                n["hung_up"] += hang_up is not None

        await asyncio.gather(*[client_loop() for _ in range(8)])
        return n

    async def idle() -> dict:
        """The gauges once both are 0 (or after 30 s), a second later."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            g = await asyncio.to_thread(server.gauges)
            if not g.get("running") and not g.get("waiting"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # hung-up streams are cancelled at the engine's next step
        return await asyncio.to_thread(server.gauges)

    await round_of(max(50, args.requests // 10), 200_000, time.monotonic() + args.cap)
    await idle()
    before = server.status()
    t = time.monotonic()
    n = await round_of(args.requests, 300_000, t + args.memory_cap)
    if time.monotonic() > t + args.memory_cap:
        truncated.append("rss_growth")
    g = await idle()
    after = server.status()
    return {
        "requests": n["done"],  # fewer than --requests only when the cap cut the phase
        "hung_up": n["hung_up"],
        "request_errors": n["errors"],
        "rss_warm_mb": before["rss"] / 2**20,
        "rss_after_mb": after["rss"] / 2**20,
        "rss_growth": after["rss"] / before["rss"],
        "threads_warm": before["threads"],
        "threads_after": after["threads"],
        "running_after": g.get("running"),
        "waiting_after": g.get("waiting"),
    }


async def drive(server: Server, loaded, args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    truncated: list[str] = []
    try:
        for i in range(4):  # warm-up
            await stream(client, prompt_text(i, 12), 8, seed=i)
        row = await overhead(client, loaded, args)
        row |= await latency(client, args, truncated)
        row |= await held(client, server, args, truncated)
        row |= await memory(client, server, args, truncated)
    finally:
        await client.close()
    return row | {"truncated": truncated}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--streams", type=int, default=32, help="streams at once (slots + queue)")
    ap.add_argument("--extra", type=int, default=4, help="requests past the queue (429 expected)")
    ap.add_argument("--requests", type=int, default=1000, help="short requests of the RSS phase")
    ap.add_argument("--singles", type=int, default=24, help="single streams (TTFT of 1 stream)")
    # 200 requests, so that p99 is the 3rd slowest rather than ~the slowest of 96
    ap.add_argument("--poisson", type=int, default=25, help="Poisson requests: 8x as many")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens per latency stream")
    ap.add_argument("--trials", type=int, default=5, help="trials of the overhead comparison")
    ap.add_argument("--cap", type=float, default=120, help="seconds each phase may take at most")
    ap.add_argument("--memory-cap", type=float, default=600, help="seconds for the RSS phase")
    ap.add_argument("--tiny", action="store_true", help="a 2 x 64 model and small counts")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    use_all_cpus()
    cfg = dict(get_preset("gpt2")["config"])
    if args.tiny:
        cfg.update(TINY)
        args.requests, args.singles, args.poisson, args.trials = 100, 4, 4, 1
    from lmforge.api import load_run

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / NAME
        params = make_folder(folder, cfg)
        loaded = load_run(folder, "cpu")
        with Server(folder, args.slots, args.streams - args.slots, Path(tmp) / "server.log") as s:
            row = asyncio.run(drive(s, loaded, args))
    row = {
        "model": f"gpt2 shape{' (tiny)' if args.tiny else ''}, random weights",
        "params": params,
        "slots": args.slots,
        "max_queue": args.streams - args.slots,
        "new_tokens": args.new_tokens,
        "server": "subprocess: python -m lmforge serve; openai clients in this process",
        **row,
        "wall_s": time.monotonic() - started,
        **machine_fields(),
    }
    print_row(row, args.json)


if __name__ == "__main__":
    main()
