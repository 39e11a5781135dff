"""`lmforge serve`: an OpenAI-compatible HTTP server (completions, chat, streaming) and a web
playground for a run; the model loads after the server starts listening (/health says when)."""

from dataclasses import dataclass, field

from lmforge.cli import options
from lmforge.cli.sample_cmd import UNKNOWN_TOKEN_HELP
from lmforge.errors import ConfigError


@dataclass
class ServeConfig:
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to listen on; 0.0.0.0 opens it to all"}
    )
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    slots: int = field(default=8, metadata={"help": "sequences decoded side by side"})
    max_len: int | None = field(
        default=None,
        metadata={
            "help": "tokens a slot holds, prompt and reply (its cache's size); longer requests "
            "get 400",
            "default_help": "the model's context",
        },
    )
    max_queue: int = field(
        default=32, metadata={"help": "sequences that may wait for a slot; more get 429"}
    )
    quantize: str | None = options.quantize_option()
    api_key: str | None = field(
        default=None,
        metadata={"help": "require `Authorization: Bearer KEY` on /v1/*", "default_help": "open"},
    )
    cors_origin: list[str] | None = field(
        default=None,
        metadata={
            "help": "allow browser requests from these origins (* for any)",
            "nargs": "+",
            "metavar": "ORIGIN",
        },
    )
    max_tokens_limit: int = field(
        default=4096, metadata={"help": "the most tokens one request may ask for (max_tokens)"}
    )
    max_body_bytes: int = field(default=2**20, metadata={"help": "larger request bodies get 413"})
    model_name: str | None = field(
        default=None,
        metadata={"help": "the model id /v1/models lists", "default_help": "RUN as given"},
    )
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    unknown_token: str | None = field(default=None, metadata={"help": UNKNOWN_TOKEN_HELP})


def add_parser(sub):
    p = sub.add_parser(
        "serve",
        help="serve a run over an OpenAI-compatible HTTP API",
        description="Serve a run folder, Hugging Face folder or model name over HTTP: "
        "/v1/completions, /v1/chat/completions (streamed or not), /v1/models, /health, "
        "/metrics, and a playground page at /.",
    )
    p.add_argument("run", help="run folder, Hugging Face folder or model name (distilgpt2)")
    options.add_options(p, ServeConfig)
    return p


def run(args) -> int:
    cfg = options.from_args(args, ServeConfig)
    for name in ("slots", "max_queue", "max_tokens_limit", "max_body_bytes", "max_len"):
        value = getattr(cfg, name)
        if value is not None and value < (0 if name == "max_queue" else 1):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} must be >= 1")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"--port {cfg.port} must be between 0 and 65535")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "lmforge serve needs FastAPI and uvicorn: pip install 'lmforge[serve]'"
        ) from None
    from lmforge.presets import find_checkpoint
    from lmforge.serve.app import create_app, serve_forever

    if find_checkpoint(args.run) is None:  # before listening: a typo fails at once
        raise ConfigError(
            f"preset {args.run!r} has random weights and no tokenizer; train a run with it first "
            f"(lmforge train --preset {args.run}) and serve the run folder"
        )
    app = create_app(
        args.run,
        slots=cfg.slots,
        max_len=cfg.max_len,
        max_queue=cfg.max_queue,
        quantize=cfg.quantize,
        api_key=cfg.api_key,
        cors_origins=cfg.cors_origin or (),
        max_tokens_limit=cfg.max_tokens_limit,
        max_body_bytes=cfg.max_body_bytes,
        device=cfg.device,
        unknown_token=cfg.unknown_token,
        model_name=cfg.model_name,
    )
    try:
        serve_forever(app, cfg.host, cfg.port)
    except OSError as e:  # the port is taken, the address is not ours
        raise ConfigError(
            f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}; pass --port"
        ) from None
    error = app.state.lmforge.load_error
    if error:
        raise ConfigError(error)
    return 0
