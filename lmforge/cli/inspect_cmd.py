"""`lmforge inspect`: next-token tables and attention maps of a run for some prompts.

Writes a self-contained HTML report (and, with --png, one heatmap per prompt and layer) and prints
each prompt's table; the work itself is in lmforge.inspect.
"""

from dataclasses import dataclass, field
from pathlib import Path

from lmforge.cli import options
from lmforge.cli.sample_cmd import UNKNOWN_TOKEN_HELP
from lmforge.errors import ConfigError


@dataclass
class InspectConfig:
    prompt: list[str] | None = field(
        default=None,
        metadata={"help": "text to inspect (repeat for several prompts)", "required": True},
    )
    top_k: int = field(
        default=5,
        metadata={"help": "most probable next tokens (a classifier: labels) to list, at most all"},
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "HTML report",
            "default_help": "RUN/inspect.html when RUN is a folder, else ./inspect.html",
            "metavar": "FILE",
        },
    )
    png: str | None = field(
        default=None,
        metadata={
            "help": "folder for heatmap PNGs, one per prompt and layer (created if missing)",
            "default_help": "none: no PNGs",
            "metavar": "DIR",
        },
    )
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    unknown_token: str | None = field(default=None, metadata={"help": UNKNOWN_TOKEN_HELP})
    quantize: str | None = options.quantize_option()


def add_parser(sub):
    p = sub.add_parser(
        "inspect",
        help="next-token tables and attention maps for prompts",
        description="Show the most probable next tokens for each prompt and write an HTML report "
        "where each token is shaded by the attention it receives (average and per head).",
    )
    p.add_argument("run", help="run folder (or Hugging Face folder or name)")
    options.add_options(p, InspectConfig)
    return p


def run(args) -> int:
    from lmforge.api import load_run
    from lmforge.inspect import render
    from lmforge.inspect.next_token import inspect_prompt

    cfg = options.from_args(args, InspectConfig)
    if not cfg.prompt:
        raise ConfigError('give at least one --prompt "text" to inspect')
    run_dir = Path(args.run)  # or a Hugging Face name such as distilgpt2
    # every output path is checked before anything is written (and before the model loads)
    out = render.check_out_path(
        cfg.out or (run_dir if run_dir.is_dir() else Path()) / "inspect.html"
    )
    if out.exists() and out.suffix.lower() not in (".html", ".htm"):  # a user's own file
        raise ConfigError(
            f"--out {out} exists and is not an .html file, so it stays as it is; give the "
            f"report an .html name (e.g. --out {out.with_suffix('.html')})"
        )
    if cfg.png is not None:
        png = render.check_out_dir(cfg.png, "--png")
        if png.resolve() == out.resolve():
            raise ConfigError(
                f"--out {out} and --png {png} are the same path; give the report and the "
                "heatmap folder different names"
            )
        render.import_pyplot()  # a missing matplotlib fails now, not after the report
    loaded = load_run(args.run, cfg.device, cfg.unknown_token, cfg.quantize)
    model, tok = loaded.model, loaded.tokenizer
    seen = [inspect_prompt(model, tok, prompt, cfg.top_k) for prompt in cfg.prompt]
    if cfg.png is not None:  # now that the layers are known: no file to write is a folder
        render.check_out_dir(cfg.png, "--png", tuple(render.png_names(seen)))
    for s in seen:
        print(f"prompt: {s.prompt}  ({len(s.tokens)} tokens)")
        width = max(len(t.token) for t in s.next_tokens)
        for rank, t in enumerate(s.next_tokens, 1):
            print(f"  {rank:>2}. {t.token:<{width}}  {t.prob:.3f}")
    c = model.config
    about = (
        f"{args.run}: {model.family} model, {model.num_params():,} parameters, "
        f"{c.num_layers} layer(s) x {c.num_heads} heads, context {c.max_seq_len}, "
        f"{tok.kind} tokenizer of {tok.vocab_size:,} tokens"
    )
    render.write_html_report(
        seen, out, title=f"lmforge inspect: {Path(args.run).name}", about=about
    )
    print(f"report: {out}")
    if cfg.png is not None:
        for path in render.save_attention_pngs(seen, cfg.png):
            print(f"heatmap: {path}")
    return 0
