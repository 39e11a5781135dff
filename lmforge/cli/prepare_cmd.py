"""`lmforge prepare`: split, tokenize and encode a corpus into a prepared folder."""

import json

from lmforge.cli import options
from lmforge.data.prepare import PrepareConfig, prepare
from lmforge.errors import ConfigError


def add_parser(sub):
    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus into memory-mapped token files",
        description="Split a corpus into train/val, train or load a tokenizer, "
        "and encode both splits into memory-mapped token files.",
    )
    options.add_options(p, PrepareConfig)
    p.add_argument("--out", required=True, help="output folder (required)")
    p.add_argument(
        "--json", action="store_true", help="print meta.json's summary as one line (default: off)"
    )
    return p


def run(args) -> int:
    cfg = options.from_args(args, PrepareConfig)
    if not cfg.data:
        raise ConfigError("--data is required: a file, a folder or a dataset name")
    data = prepare(cfg, args.out)
    m = data.meta
    summary = {
        "out": str(data.path),
        "tokenizer": m["tokenizer"],
        "vocab_size": m["vocab_size"],
        "train_tokens": m["splits"]["train"]["tokens"],
        "val_tokens": m["splits"]["val"]["tokens"],
        "documents": {s: m["splits"][s].get("documents") for s in ("train", "val")},
        "labels": m["labels"],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"prepared {summary['out']}: {m['tokenizer']} tokenizer, vocab {m['vocab_size']}, "
            f"{summary['train_tokens']:,} train / {summary['val_tokens']:,} val tokens"
        )
    return 0
