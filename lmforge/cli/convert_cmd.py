"""`lmforge convert`: a run folder to a Hugging Face folder, or a Hugging Face folder to a run."""

from dataclasses import dataclass, field

from lmforge.cli import options
from lmforge.interop.hf import FORMATS


@dataclass
class ConvertConfig:
    to: str = field(
        default="hf",
        metadata={
            "help": "hf: a folder transformers loads; lmforge: our run folder",
            "choices": FORMATS,
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace OUT if it exists"})
    merge_lora: bool = field(
        default=False,
        metadata={"help": "fold a LoRA run's adapters (or --adapter's) into plain weights"},
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "a PEFT LoRA adapter folder to add to SOURCE (with --merge-lora)",
            "default_help": "none",
        },
    )


def add_parser(sub):
    p = sub.add_parser(
        "convert",
        help="convert between run folders and Hugging Face folders",
        description="Write the model and tokenizer of SOURCE (a run folder, a Hugging Face "
        "folder or a name such as distilgpt2) to a new folder OUT in another format.",
    )
    p.add_argument("source", help="run folder, Hugging Face folder or model name")
    p.add_argument("out", help="folder to write")
    options.add_options(p, ConvertConfig)
    return p


def run(args) -> int:
    from lmforge.api import convert

    cfg = options.from_args(args, ConvertConfig)
    out = convert(
        args.source,
        cfg.to,
        args.out,
        overwrite=cfg.overwrite,
        merge_lora=cfg.merge_lora,
        adapter=cfg.adapter,
    )
    merged = ", LoRA merged" if cfg.merge_lora else ""
    print(f"wrote {out} ({cfg.to} format{merged})")
    return 0
