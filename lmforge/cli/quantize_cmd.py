"""`lmforge quantize RUN --out RUN-int8`: a run folder with int8 weights (a scale per output
channel), which sample, eval and inspect load like any run."""

from dataclasses import dataclass, field

from lmforge.cli import options


@dataclass
class QuantizeConfig:
    kind: str = field(
        default="int8", metadata={"help": "weight format", "choices": options.QUANTIZE_KINDS}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace OUT if it exists"})


def add_parser(sub):
    p = sub.add_parser(
        "quantize",
        help="write a run with int8 weights",
        description="Write RUN (a run folder, a Hugging Face folder or a name such as "
        "distilgpt2) as a new run folder OUT whose linear layers and output head hold int8 "
        "weights with a float32 scale per output channel (about a quarter of their float32 "
        "size); embeddings stay exact. sample, eval and inspect load OUT like any run.",
    )
    p.add_argument("run", help="run folder, Hugging Face folder or model name")
    p.add_argument("--out", required=True, metavar="OUT", help="run folder to write (required)")
    options.add_options(p, QuantizeConfig)
    return p


def run(args) -> int:
    from lmforge.api import save_quantized

    cfg = options.from_args(args, QuantizeConfig)
    out = save_quantized(args.run, args.out, cfg.kind, overwrite=cfg.overwrite)
    print(f"wrote {out} ({cfg.kind} weights)")
    return 0
