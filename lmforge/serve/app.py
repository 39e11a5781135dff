"""The HTTP server: OpenAI's completions and chat endpoints (streamed as Server-Sent Events),
/v1/models, /health, /metrics and the playground page, over one engine thread.

Python entry points (stable):
    app = create_app("runs/wine", slots=8, max_queue=32)   # a FastAPI app; loads in background
    with running_server(app) as url:                        # uvicorn in a thread on a free port
        ...  # url == "http://127.0.0.1:PORT"; OpenAI clients use base_url=url + "/v1"
    app.state.lmforge.ready.wait()                          # a threading.Event, set once loaded
    serve_forever(app, "127.0.0.1", 8000)                   # `lmforge serve`: until SIGTERM

--api-key guards /v1/* only: / (the playground), /static, /health and /metrics stay open.

Every error a client sees is OpenAI's `{"error": {...}}` (lmforge.serve.protocol); no traceback
leaves the process below DEBUG logging.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ConfigError, LmforgeError
from lmforge.serve import protocol
from lmforge.serve.protocol import APIError

log = logging.getLogger("lmforge.serve")

STATIC = Path(__file__).parent / "static"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
MAX_DRAIN = 64 * 2**20  # an oversized body is read (and dropped) up to this, then cut off


@dataclass
class RequestStats:
    """What the log line and the metrics say about one request."""

    start: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first: float | None = None  # when the first token came
    last: float | None = None

    def line(self, method: str, path: str, status: int) -> str:
        elapsed = time.perf_counter() - self.start
        text = f"{method} {path} {status}"
        if self.prompt_tokens or self.completion_tokens:
            ttft = "-" if self.first is None else f"{self.first - self.start:.3f}s"
            rate = self.completion_tokens / elapsed if elapsed > 0 else 0.0
            text += (
                f" prompt_tokens={self.prompt_tokens} completion_tokens={self.completion_tokens}"
                f" ttft={ttft} {rate:.1f} tok/s"
            )
        return f"{text} {elapsed:.3f}s"


class Metrics:
    """Prometheus metrics in a registry of their own (several apps may share a process)."""

    def __init__(self, state: "ServerState"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = reg = CollectorRegistry()
        running = Gauge("lmforge_requests_running", "sequences holding a slot", registry=reg)
        running.set_function(lambda: state.worker.running if state.worker else 0)
        waiting = Gauge("lmforge_requests_waiting", "sequences waiting for a slot", registry=reg)
        waiting.set_function(lambda: state.worker.waiting if state.worker else 0)
        slots = Gauge("lmforge_slots", "slots of the engine", registry=reg)
        slots.set(state.slots)
        self.requests = Counter(
            "lmforge_requests", "HTTP requests by path and status", ["path", "status"], registry=reg
        )
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "prompt tokens read", registry=reg)
        self.tokens = Counter("lmforge_tokens_generated", "tokens generated", registry=reg)
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds",
            "seconds from a request's arrival to its first token",
            registry=reg,
        )
        self.inter_token = Histogram(
            "lmforge_inter_token_latency_seconds",
            "seconds between tokens of one sequence",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=reg,
        )

    def on_delta(self, stats: RequestStats, num_tokens: int) -> None:
        if not num_tokens:
            return
        now = time.perf_counter()
        if stats.first is None:
            stats.first = now
            self.ttft.observe(now - stats.start)
        else:
            self.inter_token.observe((now - stats.last) / num_tokens)
        stats.last = now
        stats.completion_tokens += num_tokens
        self.tokens.inc(num_tokens)


class ServerState:
    """The model, its engine thread and the server's limits; `ready` is set once loaded."""

    def __init__(self, run, slots, max_queue, quantize, device, unknown_token, limits, max_len):
        self.run, self.name = run, str(run)
        self.slots, self.max_queue, self.max_len = slots, max_queue, max_len
        self.quantize, self.device, self.unknown_token = quantize, device, unknown_token
        self.max_tokens_limit, self.max_body_bytes, self.api_key = limits
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.loaded = self.worker = self.template = self.limits = None
        self.metrics = Metrics(self)

    def load(self) -> None:
        """Load the run and start the engine thread (in a background thread)."""
        from lmforge.api import load_run
        from lmforge.generation.engine import Engine
        from lmforge.serve.worker import EngineWorker
        from lmforge.tokenizers.chat import load_chat_template

        try:
            loaded = load_run(self.run, self.device, self.unknown_token, self.quantize)
            loaded.require("causal-lm", "`lmforge serve`")
            context = getattr(loaded.model.config, "max_seq_len", None)
            capped = context is not None and self.max_len is not None and self.max_len < context
            if capped:
                context = self.max_len  # what a slot holds: requests fit in it
            self._check_memory(loaded.model, context)
            engine = Engine(
                loaded.model, slots=self.slots, max_len=context, tokenizer=loaded.tokenizer
            )
            engine.pick_threads()  # while /health says 503, not in the first requests' time
        except LmforgeError as e:  # /health says it; `lmforge serve` prints it and exits 2
            self.load_error = str(e)
            self.ready.set()
            return
        self.loaded = loaded
        self.template = load_chat_template(loaded.tokenizer, loaded.folder)
        name = "the server's --max-len" if capped else "the model's context"
        self.limits = protocol.Limits(
            self.max_tokens_limit, context, self.slots + self.max_queue, name
        )
        self.worker = EngineWorker(engine)
        self.worker.start()
        log.info("serving %s: %d slots, queue of %d", self.name, self.slots, self.max_queue)
        self.ready.set()

    def _check_memory(self, model, max_len: int | None) -> None:
        """The engine's memory check, its advice in `lmforge serve`'s flags."""
        from lmforge.generation.engine import slots_that_fit
        from lmforge.generation.prompts import model_device

        fit = slots_that_fit(model, self.slots, max_len, model_device(model))
        if fit is not None:
            smaller = "" if max_len is None else " or a smaller --max-len"
            raise ConfigError(f"{fit[1]}; pass --slots {fit[0]} or fewer{smaller}")

    def check_ready(self) -> None:
        if self.worker is None:
            message = self.load_error or "the model is still loading; retry in a few seconds"
            raise APIError(503, message, headers={"Retry-After": "1"})

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def create_app(
    run: str | Path,
    slots: int = 8,
    max_queue: int = 32,
    quantize: str | None = None,
    api_key: str | None = None,
    cors_origins=(),
    max_tokens_limit: int = 4096,
    max_body_bytes: int = 2**20,
    device: str = "auto",
    unknown_token: str | None = None,
    model_name: str | None = None,
    max_len: int | None = None,
):
    """The FastAPI app serving `run` (a run folder, Hugging Face folder or name).

    The model loads in a background thread once the app starts (/health answers 503 until then).
    `app.state.lmforge` is the ServerState (`.ready`, `.load_error`, `.worker`).

    Args:
        slots: sequences decoded side by side; max_queue more may wait, then requests get 429.
        max_len: tokens a slot holds, prompt and reply (default: the model's context); a
            request that needs more gets 400. A 32k-context model fits in less memory so.
        api_key: when set, /v1/* need `Authorization: Bearer <api_key>`.
        max_tokens_limit: the most tokens one choice may ask for (max_tokens).
        max_body_bytes: larger request bodies get 413.
        model_name: the id /v1/models lists and requests name (default: `run` as given); a
            request without `model` is served too, as vLLM and llama.cpp do.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    limits = (max_tokens_limit, max_body_bytes, api_key)
    state = ServerState(run, slots, max_queue, quantize, device, unknown_token, limits, max_len)
    state.name = model_name or state.name

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=state.load, name="lmforge-load", daemon=True).start()
        yield
        state.close()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.lmforge = state

    def error_response(e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        message = f"Invalid URL ({request.method} {request.url.path})"
        if e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(APIError(e.status_code, message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e):
        return error_response(APIError(400, str(e)))

    @app.get("/health")
    async def health():
        if not state.ready.is_set() or state.load_error:
            message = state.load_error or "the model is loading"
            return error_response(APIError(503, message, headers={"Retry-After": "1"}))
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        state.check_ready()
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        state.check_ready()
        state.check_model(model)
        return _model_card(state)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(state, request, chat=True)

    @app.get("/")
    async def playground():
        if not (STATIC / "index.html").is_file():
            raise APIError(404, "the playground is not installed (lmforge/serve/static)")
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Outer, state=state)
    if cors_origins:  # outermost: 401s and 500s carry the CORS headers too, so browsers see them
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


def _model_card(state: ServerState) -> dict:
    return {"id": state.name, "object": "model", "created": 0, "owned_by": "lmforge"}


class _Outer:
    """ASGI middleware: the API key, one log line per request, request metrics, and a 500 in
    OpenAI's shape (no traceback below DEBUG) for any exception a route lets out."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stats = scope["lmforge_stats"] = RequestStats()
        method, path = scope["method"], scope["path"]
        status = None

        async def send_(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refused = self._refused(scope)
            if refused is not None:
                await _send_error(send_, refused)
            else:
                await self.app(scope, receive, send_)
        except Exception as e:  # a bug: the client gets a 500, the log one line
            log.info("%s %s failed: %s: %s", method, path, type(e).__name__, e)
            log.debug("%s %s failed", method, path, exc_info=True)
            if status is None:
                error = APIError(500, "the server failed to handle the request")
                await _send_error(send_, error)
        finally:
            status = 499 if status is None else status  # the client left before any answer
            label = path if path in ROUTES else "other"
            self.state.metrics.requests.labels(label, str(status)).inc()
            log.info(stats.line(method, path, status))

    def _refused(self, scope) -> APIError | None:
        key = self.state.api_key
        if key is None or not scope["path"].startswith("/v1"):
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), key):
            return None
        what = "no API key was given" if not given else "the API key is wrong"
        return APIError(
            401,
            f"{what}; send the server's --api-key as the header Authorization: Bearer KEY",
            code="invalid_api_key",
        )


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_json(request, limit: int):
    """The body as JSON; 413 past `limit` bytes (read and dropped, so the client hears it)."""
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > MAX_DRAIN:
            break
    if size > limit:
        raise APIError(
            413,
            f"the request body is {size} bytes, over the server's limit of {limit} "
            "(lmforge serve --max-body-bytes)",
            code="request_too_large",
        )
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


async def _generate(state: ServerState, request, chat: bool):
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    state.check_ready()
    body = await _read_json(request, state.max_body_bytes)
    tokenizer = state.loaded.tokenizer
    if chat:
        req = protocol.parse_chat(body, tokenizer, state.template, state.limits)
    else:
        req = protocol.parse_completion(body, tokenizer, state.limits)
    state.check_model(req.model)
    needed = len(req.params)
    in_flight = state.worker.running + state.worker.waiting  # sequences, not HTTP requests
    if in_flight + needed > state.slots + state.max_queue:
        raise APIError(
            429,
            f"the server is busy: {state.slots} slots and a queue of {state.max_queue} are full; "
            "retry after the Retry-After seconds",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )
    stats: RequestStats = request.scope["lmforge_stats"]
    stats.prompt_tokens = sum(len(p) for p in req.prompts)
    state.metrics.prompt_tokens.inc(stats.prompt_tokens)
    queue: asyncio.Queue = asyncio.Queue()
    seqs = [
        state.worker.submit(req.prompt_of(i), params, queue, i)
        for i, params in enumerate(req.params)
    ]
    reply = _Reply(state, req, stats, f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}")

    def release():  # no-op for sequences that ended
        for seq in seqs:
            state.worker.cancel(seq)

    if req.stream:

        class EventStream(StreamingResponse):
            async def __call__(self, scope, receive, send):
                try:  # the client may leave before the first event: cancel here, not in events()
                    await super().__call__(scope, receive, send)
                finally:
                    release()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return EventStream(reply.stream(queue), media_type="text/event-stream", headers=headers)
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        work = asyncio.ensure_future(reply.collect(queue))
        done, _ = await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
        if work not in done:  # the client hung up: stop its sequences, answer nobody
            work.cancel()
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        return JSONResponse(work.result())
    finally:
        watch.cancel()
        release()


async def _wait_for_disconnect(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Reply:
    """Turns one request's Deltas into OpenAI's response object or its stream of chunks."""

    def __init__(self, state: ServerState, req, stats: RequestStats, request_id: str):
        self.state, self.req, self.stats, self.id = state, req, stats, request_id
        self.created = int(time.time())
        self.tokenizer = state.loaded.tokenizer
        self.model = state.name
        self.num = len(req.params)
        self.offsets = [
            req.echo_offsets[i // req.n] if req.echo_offsets else 0 for i in range(self.num)
        ]

    def _logprobs(self, index: int, logprobs):
        if self.req.params[index].logprobs is None:
            return None
        stop_ids = set(self.req.params[index].stop_token_ids)
        logprobs = [lp for lp in logprobs if lp.token not in stop_ids]
        if self.req.chat:
            return protocol.chat_logprobs(self.tokenizer, logprobs)
        out = protocol.completion_logprobs(self.tokenizer, logprobs, self.offsets[index])
        self.offsets[index] += sum(len(t) for t in out["tokens"])
        return out

    def _object(self, choices, **extra) -> dict:
        if self.req.chat:
            return protocol.chat_object(self.id, self.created, self.model, choices, **extra)
        return protocol.completion_object(self.id, self.created, self.model, choices, **extra)

    def _usage(self) -> dict:
        return protocol.usage(self.stats.prompt_tokens, self.stats.completion_tokens)

    async def collect(self, queue: asyncio.Queue) -> dict:
        texts, logprobs = [""] * self.num, [[] for _ in range(self.num)]
        reasons: list[str | None] = [None] * self.num
        while any(r is None for r in reasons):
            d = await queue.get()
            self.state.metrics.on_delta(self.stats, d.num_tokens)
            if d.error is not None:
                raise APIError(500, d.error)
            texts[d.index] += d.text
            logprobs[d.index] += d.logprobs
            if d.finish_reason is not None:
                if d.finish_reason == "cancelled":
                    raise APIError(503, "the server is shutting down; the request was cancelled")
                reasons[d.index] = d.finish_reason
        choices = []
        for i in range(self.num):
            lp = self._logprobs(i, logprobs[i])
            if self.req.chat:
                message = {"role": "assistant", "content": texts[i], "refusal": None}
                choices.append({"index": i, "message": message, "logprobs": lp})
            else:
                choices.append({"index": i, "text": texts[i], "logprobs": lp})
            choices[-1]["finish_reason"] = reasons[i]
        return self._object(choices, usage=self._usage())

    def _chunk(self, index: int, text: str | None, logprobs, finish_reason=None, role=False):
        if self.req.chat:
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", **delta}
            choice = {"index": index, "delta": delta, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs}
        choice["finish_reason"] = finish_reason
        extra = {"usage": None} if self.req.include_usage else {}
        return protocol.sse(self._object([choice], chunk=True, **extra))

    async def stream(self, queue: asyncio.Queue):
        """SSE strings: content chunks, a finish chunk per choice, usage if asked, [DONE]; an
        error once the stream started is an error event before [DONE]."""
        try:
            async for event in self._events(queue):
                yield event
        except Exception as e:  # noqa: BLE001 - the status line is gone: tell it in the stream
            log.info("streaming failed: %s: %s", type(e).__name__, e)
            log.debug("streaming failed", exc_info=True)
            failed = APIError(500, "the server failed while streaming the answer")
            yield protocol.sse(failed.body())
            yield protocol.sse("[DONE]")

    async def _events(self, queue: asyncio.Queue):
        if self.req.chat:
            for i in range(self.num):
                yield self._chunk(i, "", None, role=True)
        left = self.num
        while left:
            d = await queue.get()
            self.state.metrics.on_delta(self.stats, d.num_tokens)
            if d.error is not None or d.finish_reason == "cancelled":
                message = d.error or "the server is shutting down; the request was cancelled"
                status = 500 if d.error else 503
                yield protocol.sse(APIError(status, message).body())
                break
            logprobs = self._logprobs(d.index, d.logprobs) if d.logprobs else None
            if d.text or logprobs:
                yield self._chunk(d.index, d.text, logprobs)
            if d.finish_reason is not None:
                left -= 1
                yield self._chunk(d.index, None, None, d.finish_reason)
        else:
            if self.req.include_usage:
                yield protocol.sse(self._object([], chunk=True, usage=self._usage()))
        yield protocol.sse("[DONE]")


# ---------------------------------------------------------------- running it


def _free_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


FINISH_SECONDS = 2.0  # on Ctrl-C / SIGTERM, running requests get this long, then are cancelled


def _server(app, graceful_seconds: float):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                log.info("lmforge serve: stopping (signal %d)", sig)
                # streams still running then end with an error event and [DONE], not cut off
                state: ServerState = app.state.lmforge
                timer = threading.Timer(FINISH_SECONDS, state.close)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once it has shut down (exit code 128 + sig); a
            # server that finished or cancelled its requests on Ctrl-C / SIGTERM exits with 0
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(
        app,
        access_log=False,  # ours is one line per request, with tokens and speed
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=graceful_seconds,
    )
    return Server(config)


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, wait_ready: bool = True):
    """Run `app` with uvicorn in a thread on host:port (0: a free port) and yield its base URL
    once it listens and (wait_ready) the model is loaded or failed; stops the server on exit.

    Example:
        with running_server(create_app("runs/wine")) as url:
            openai.OpenAI(base_url=url + "/v1", api_key="none").completions.create(...)
    """
    sock = _free_socket(host, port)
    server = _server(app, graceful_seconds=2.0)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="lmforge-server", daemon=True
    )
    thread.start()
    try:
        state: ServerState = app.state.lmforge
        deadline = time.monotonic() + 120
        while not (server.started and (state.ready.is_set() or not wait_ready)):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def serve_forever(app, host: str, port: int) -> None:
    """Run `app` until Ctrl-C or SIGTERM (uvicorn's handlers); running requests get
    FINISH_SECONDS to finish, then the engine cancels what is left."""
    sock = _free_socket(host, port)
    server = _server(app, graceful_seconds=FINISH_SECONDS + 8)

    def stop_if_load_fails():
        state: ServerState = app.state.lmforge
        state.ready.wait()
        if state.load_error:
            server.should_exit = True

    threading.Thread(target=stop_if_load_fails, daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    log.info("lmforge serve: listening on http://%s:%d", shown, sock.getsockname()[1])
    server.run(sockets=[sock])
