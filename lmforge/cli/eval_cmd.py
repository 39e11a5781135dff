"""`lmforge eval`: loss, perplexity and bits per character of a run on its validation split
or on another text; accuracy, per-class precision/recall/F1 and the confusion matrix of a
classifier run, masked accuracy of a masked-LM run."""

import json
import logging
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
    p.add_argument(
        "--data",
        default=None,
        help="evaluate on this text instead (all of it) (default: the run's own data)",
    )
    p.add_argument(
        "--field", default=None, help="CSV column / JSON field of --data (default: none)"
    )
    p.add_argument(
        "--label-field",
        default=None,
        help="classifier runs: the label column of --data (default: none)",
    )
    p.add_argument(
        "--split",
        default=None,
        choices=["test", "train", "all"],
        help="classifier/MLM runs: test, train, or all of --data (default: test when the data "
        "has a test split, else all)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch (default: 16)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    p.add_argument("--precision", default="auto", help="auto|fp32|bf16 (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON line (default: off)")
    return p


def run(args) -> int:
    from lmforge.api import load_for_sampling
    from lmforge.data.prepare import PrepareConfig, PreparedData, prepare
    from lmforge.device import resolve_precision
    from lmforge.training import checkpoint as ckpt
    from lmforge.training.run_data import make_examples
    from lmforge.training.trainer import evaluate

    if args.config:
        for k, v in options.read_config_file(args.config).items():
            if getattr(args, k, None) in (None, 16, "auto", False):
                setattr(args, k, v)
    config = ckpt.read_config(args.run)
    model, tok = load_for_sampling(args.run, args.device)
    info = config["data"]
    if config.get("task"):  # classify / mlm runs
        return _run_task(args, config, model)
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


def _run_task(args, config, model) -> int:
    """Accuracy, per-class scores and confusion matrix (classify); masked accuracy (mlm)."""
    from lmforge.evaluate.metrics import (
        classification_report,
        constant_predictions,
        predict_labels,
    )
    from lmforge.training.run_data import labelled_split, make_task_examples
    from lmforge.training.trainer import evaluate

    spec, info = config["task"], config["data"]
    data, split, label_ids = labelled_split(
        info["path"],
        args.data,
        Path(args.run) / "tokenizer",
        args.field,
        args.label_field,
        args.split,
        spec.get("labels"),
        config.get("train", {}).get("normalize_labels", False),
    )
    examples = make_task_examples(data, split, spec, info["block_size"], label_ids, True)
    if spec["kind"] == "mlm":
        result = evaluate(model, examples, args.batch_size)
        out = {
            "loss": result["loss"],
            "perplexity": result["perplexity"],
            "masked_accuracy": result["accuracy"],
            "masked_tokens": result["tokens"],
        }
    else:
        predicted, true, loss = predict_labels(model, examples, args.batch_size)
        out = {"loss": loss, **classification_report(predicted, true, spec["labels"])}
        per_class = [sum(column) for column in zip(*out["confusion_matrix"])]  # predictions
        warning = constant_predictions(per_class, out["labels"])
        if warning:
            logging.getLogger(__name__).warning("%s", warning)
    if args.json:
        print(json.dumps(out))
        return 0
    for k, v in out.items():
        if k == "per_class":
            for name, s in v.items():
                print(
                    f"  {name:>12}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
                    f"f1 {s['f1']:.4f}  support {s['support']}"
                )
        elif k == "confusion_matrix":
            print("confusion matrix (rows: true, columns: predicted):")
            for name, row in zip(out["labels"], v):
                print(f"  {name:>12}  " + "  ".join(f"{n:>6}" for n in row))
        elif k != "labels":
            print(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
    return 0
