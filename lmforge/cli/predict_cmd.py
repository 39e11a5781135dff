"""`lmforge predict`: class probabilities of texts from a classifier run."""

import json
import logging
from pathlib import Path

from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser(
        "predict",
        help="classify texts with a classifier run",
        description="Print each text's label probabilities under a --task classify run.",
    )
    p.add_argument("run", help="run folder (or Hugging Face folder) of a classifier")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument(
        "--file", default=None, help="classify each line of this file too (default: none)"
    )
    p.add_argument(
        "--max-seq-len", type=int, default=None, help="pack to this length (default: the run's)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    p.add_argument("--json", action="store_true", help="one JSON line per text (default: off)")
    return p


def run(args) -> int:
    from lmforge.api import load_run
    from lmforge.models.bert import BertPreprocessor

    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise DataError(f"--file {path} does not exist: pass a text file, one text a line")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ConfigError("no texts to classify: pass them as arguments or with --file")
    loaded = load_run(args.run, args.device)
    loaded.require("classify", "`lmforge predict`")
    model, tok = loaded.model, loaded.tokenizer
    length = args.max_seq_len or loaded.block_size
    model.preprocessor = BertPreprocessor(tok, length)
    probabilities = model.predict(texts, args.batch_size)
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
