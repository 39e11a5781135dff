"""`lmforge predict`: class probabilities of texts from a classifier run."""

import json
import logging
from dataclasses import dataclass
from dataclasses import field as option
from pathlib import Path

from lmforge.cli import options
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    file: str | None = option(
        default=None, metadata={"help": "classify each line of this file too"}
    )
    max_seq_len: int | None = option(
        default=None, metadata={"help": "pack to this length", "default_help": "the run's"}
    )
    batch_size: int = option(default=32, metadata={"help": "texts per batch"})
    device: str = option(default="auto", metadata={"help": "auto|cpu|cuda"})


def add_parser(sub):
    p = sub.add_parser(
        "predict",
        help="classify texts with a classifier run",
        description="Print each text's label probabilities under a --task classify run.",
    )
    p.add_argument("run", help="run folder (or Hugging Face folder) of a classifier")
    p.add_argument("texts", nargs="*", help="texts to classify")
    options.add_options(p, PredictConfig)
    p.add_argument("--json", action="store_true", help="one JSON line per text (default: off)")
    return p


def run(args) -> int:
    from lmforge.api import load_run
    from lmforge.models.bert import BertPreprocessor

    cfg = options.from_args(args, PredictConfig)
    texts = list(args.texts)
    if cfg.file:
        path = Path(cfg.file)
        if not path.is_file():
            raise DataError(f"--file {path} does not exist: pass a text file, one text a line")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("no texts to classify: pass them as arguments or with --file")
    loaded = load_run(args.run, cfg.device)
    loaded.require("classify", "`lmforge predict`")
    model, tok = loaded.model, loaded.tokenizer
    length = cfg.max_seq_len or loaded.block_size
    model.preprocessor = BertPreprocessor(tok, length)
    probabilities = model.predict(texts, cfg.batch_size)
    if model.preprocessor.num_truncated:
        log.info(
            "%d of %d texts were longer than %d tokens and were cut",
            model.preprocessor.num_truncated,
            len(texts),
            length,
        )
    for text, row in zip(texts, probabilities.tolist()):
        scores = dict(zip(model.labels, row))
        best = max(scores, key=scores.get)
        if args.json:
            print(json.dumps({"text": text, "label": best, "probabilities": scores}))
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in scores.items())
            print(f"{best}\t{shown}\t{text[:60]}")
    return 0
