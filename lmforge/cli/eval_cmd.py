"""`lmforge eval`: loss, perplexity and bits per character of a run on its validation split
or on another text."""

import json
import math
from pathlib import Path

from lmforge.cli import options


def add_parser(sub):
    p = sub.add_parser(
        "eval",
        help="evaluate a run",
        description="Loss, perplexity and bits "
        "per char on the run's validation split, or on all of --data.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--data", default=None, help="evaluate on this text instead (all of it)")
    p.add_argument("--field", default=None, help="CSV column / JSON field of --data")
    p.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16 (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p


def run(args) -> int:
    from lmforge.api import load_for_sampling
    from lmforge.data.prepare import PrepareConfig, PreparedData, prepare
    from lmforge.device import resolve_precision
    from lmforge.training import checkpoint as ckpt
    from lmforge.training.trainer import evaluate, make_examples

    if args.config:
        for k, v in options.read_config_file(args.config).items():
            if getattr(args, k, None) in (None, 16, "auto", False):
                setattr(args, k, v)
    config = ckpt.read_config(args.run)
    model, tok = load_for_sampling(args.run, args.device)
    info = config["data"]
    if args.data is None:
        data, split = PreparedData(info["path"]), "val"
    else:
        from lmforge.data.datasets import cache_dir

        pcfg = PrepareConfig(
            data=args.data,
            tokenizer=str(Path(args.run) / "tokenizer"),
            field=args.field,
            val_fraction=0.0,
        )
        from lmforge.data.corpus import open_source
        from lmforge.data.prepare import cache_key

        key = cache_key(pcfg, open_source(args.data, field=args.field))
        data, split = prepare(pcfg, cache_dir() / "prepared" / key[:20]), "train"
    dev = next(model.parameters()).device
    examples = make_examples(data, split, info["batching"], info["block_size"])
    if split == "train" and info["batching"] in ("windows", "epochs"):
        from lmforge.data.windows import StrideWindows

        examples = StrideWindows(data.tokens(split), info["block_size"], keep_partial=True)
    result = evaluate(model, examples, args.batch_size, resolve_precision(args.precision, dev))
    out = {"loss": result["loss"], "perplexity": result["perplexity"], "tokens": result["tokens"]}
    if tok.kind == "char":
        out["bits_per_char"] = result["loss"] / math.log(2)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()
            )
        )
    return 0
