"""`lmforge eval`: loss, perplexity and bits per character of a run on its validation split
or on another text; accuracy, per-class precision/recall/F1 and the confusion matrix of a
classifier run, masked accuracy of a masked-LM run."""

import json
import logging
import math
from dataclasses import dataclass
from dataclasses import field as option

from lmforge.cli import options
from lmforge.cli.sample_cmd import UNKNOWN_TOKEN_HELP


@dataclass
class EvalConfig:
    data: str | None = option(
        default=None,
        metadata={
            "help": "evaluate on this text (all of it) or prepared folder (its val split) "
            "instead (default: the run's own data)"
        },
    )
    field: str | None = option(default=None, metadata={"help": "CSV column / JSON field of --data"})
    label_field: str | None = option(
        default=None, metadata={"help": "classifier runs: the label column of --data"}
    )
    split: str | None = option(
        default=None,
        metadata={
            "help": "classifier/MLM runs: test, train, or all of --data (default: test when the "
            "data has a test split, else all)",
            "choices": ("test", "train", "all"),
        },
    )
    batch_size: int = option(default=16, metadata={"help": "examples per batch"})
    device: str = option(default="auto", metadata={"help": "auto|cpu|cuda"})
    precision: str = option(default="auto", metadata={"help": "auto|fp32|bf16"})
    unknown_token: str | None = option(default=None, metadata={"help": UNKNOWN_TOKEN_HELP})
    quantize: str | None = options.quantize_option()
    adapter: str | None = options.adapter_option()


def add_parser(sub):
    p = sub.add_parser(
        "eval",
        help="evaluate a run",
        description="Loss, perplexity and bits "
        "per char on the run's validation split, or on all of --data.",
    )
    p.add_argument("run", help="run folder, Hugging Face folder or model name (distilgpt2)")
    options.add_options(p, EvalConfig)
    p.add_argument("--json", action="store_true", help="print one JSON line (default: off)")
    return p


def run(args) -> int:
    from lmforge.api import load_run
    from lmforge.device import resolve_precision
    from lmforge.training.loop import evaluate
    from lmforge.training.run_data import eval_data, make_examples, sft_eval_examples

    cfg = options.from_args(args, EvalConfig)
    loaded = load_run(args.run, cfg.device, cfg.unknown_token, cfg.quantize, cfg.adapter)
    if loaded.kind != "causal-lm":  # classify / mlm runs
        return _run_task(args, cfg, loaded)
    info = loaded.data or {"batching": "windows"}
    dev = next(loaded.model.parameters()).device
    if info["batching"].startswith("sft"):  # --task sft: held-out answers, or all of --data
        examples, split = sft_eval_examples(loaded, cfg.data, cfg.field), None
    else:
        data, split = eval_data(loaded, cfg.data, cfg.field, cfg.unknown_token)
        examples = make_examples(data, split, info["batching"], loaded.block_size)
    if split == "train" and info["batching"] in ("windows", "epochs"):
        from lmforge.data.windows import StrideWindows

        examples = StrideWindows(data.tokens(split), loaded.block_size, keep_partial=True)
    precision = resolve_precision(cfg.precision, dev, loaded.model)
    result = evaluate(loaded.model, examples, cfg.batch_size, precision)
    out = {"loss": result["loss"], "perplexity": result["perplexity"], "tokens": result["tokens"]}
    if loaded.tokenizer.kind == "char":
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


def _run_task(args, cfg, loaded) -> int:
    """Accuracy, per-class scores and confusion matrix (classify); masked accuracy (mlm)."""
    from lmforge.evaluate.metrics import (
        classification_report,
        constant_predictions,
        predict_labels,
    )
    from lmforge.presets import tokenizer_path
    from lmforge.training.loop import evaluate
    from lmforge.training.run_data import labelled_split, make_task_examples, require_data

    require_data(loaded, cfg.data)
    spec = loaded.config.get("task") or {"kind": loaded.kind}
    if loaded.kind == "classify":
        spec = {**spec, "labels": list(loaded.model.labels)}
    data, split, label_ids = labelled_split(
        (loaded.data or {}).get("path"),
        cfg.data,
        tokenizer_path(loaded.folder),
        cfg.field,
        cfg.label_field,
        cfg.split,
        spec.get("labels"),
        loaded.config.get("train", {}).get("normalize_labels", False),
        cfg.unknown_token,
    )
    examples = make_task_examples(data, split, spec, loaded.block_size, label_ids, True)
    model = loaded.model
    if spec["kind"] == "mlm":
        result = evaluate(model, examples, cfg.batch_size)
        out = {
            "loss": result["loss"],
            "perplexity": result["perplexity"],
            "masked_accuracy": result["accuracy"],
            "masked_tokens": result["tokens"],
        }
    else:
        predicted, true, loss = predict_labels(model, examples, cfg.batch_size)
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
