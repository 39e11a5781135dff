"""Workflow 3: BERT-style encoders on IMDB sentiment, layer by layer and end to end.

    LMFORGE_DATA_DIR=../shared/data .venv/bin/python examples/bert_imdb.py layers
    ... examples/bert_imdb.py scratch           # WordPiece 20k + 1 x 64 encoder, seq 512
    ... examples/bert_imdb.py mlm               # bert-tiny: MLM pretraining, then fine-tuning
    ... examples/bert_imdb.py minilm --train-steps 150 --test-reviews 2000  # needs [minilm]
    ... examples/bert_imdb.py scratch --data my.csv   # any CSV with review, sentiment, split
    ... examples/bert_imdb.py subset --train-reviews 4800 --test-reviews 5000  # CSV for the CLI

Every stage is `lmforge.train()` (the same fit() as `lmforge train`) and prints test accuracy.
--train-reviews / --test-reviews evaluate a fixed, seeded random subset (the reduced protocol).
"""

import argparse
import csv
import random
from pathlib import Path

import torch

import lmforge
from lmforge import progress


def layers() -> None:
    """Tokenizer -> preprocessor -> backbone -> task, each on its own."""
    from lmforge.models.bert import BertBackbone, BertPreprocessor, BertTextClassifier

    tok = lmforge.load_tokenizer("all-minilm-l6-v2")
    print(tok.encode("A gripping, beautifully shot film."))
    pre = BertPreprocessor(tok, sequence_length=16)
    batch = pre(["A gripping film.", "Dull."])
    print({k: v.tolist()[0] for k, v in batch.items()})
    backbone = BertBackbone.from_preset("all-minilm-l6-v2")
    print("hidden", tuple(backbone(batch["token_ids"], batch["padding_mask"]).shape))
    model = BertTextClassifier(backbone, num_classes=2, preprocessor=pre)  # a new, untrained head
    print("probabilities", model.predict(["A gripping film."]).tolist())


def subset_csv(
    out: Path,
    data: str = "imdb",
    train_reviews: int | None = None,
    test_reviews: int | None = None,
    seed: int = 0,
) -> Path:
    """`data` as one CSV of a seeded random share of its train and test reviews (all of a split
    when its count is None), in the data's own order."""
    from lmforge.data.corpus import open_source

    docs = list(open_source(data, field="review", label_field="sentiment").iter_documents())
    rng = random.Random(seed)
    keep = set()
    for split, count in (("train", train_reviews), ("test", test_reviews)):
        index = [i for i, d in enumerate(docs) if d.split == split]
        keep.update(index if count is None else rng.sample(index, min(count, len(index))))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment", "split"])
        writer.writerows((d.text, d.label, d.split) for i, d in enumerate(docs) if i in keep)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("stage", choices=["layers", "scratch", "mlm", "minilm", "subset"])
    ap.add_argument("--data", default="imdb", help="imdb, or a CSV with review, sentiment, split")
    ap.add_argument("--out", default="runs/imdb")
    ap.add_argument(
        "--epochs", type=float, default=None, help="scratch: passes over the train reviews (3)"
    )
    ap.add_argument("--mlm-epochs", type=float, default=1, help="mlm: pretraining passes")
    ap.add_argument("--train-steps", type=int, default=None, help="mlm, minilm: fine-tuning steps")
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--train-reviews", type=int, default=None, help="a random share of train")
    ap.add_argument("--test-reviews", type=int, default=None, help="a random share of the test")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = ap.parse_args(argv)
    progress.enable(True)
    torch.manual_seed(0)
    out = Path(args.out)
    data = args.data
    if args.train_reviews or args.test_reviews:
        name = f"subset-train{args.train_reviews or 'all'}-test{args.test_reviews or 'all'}.csv"
        data = str(subset_csv(out / name, data, args.train_reviews, args.test_reviews))
    common = dict(
        data=data, field="review", label_field="sentiment", eval_every=10**9, threads=args.threads
    )

    if args.stage == "subset":
        print(data)  # the CSV that `lmforge train --data` and `lmforge eval --data` can take
    elif args.stage == "layers":
        layers()
    elif args.stage == "scratch":
        result = lmforge.train(
            task="classify",
            tokenizer="wordpiece",
            vocab_size=20000,
            preset="bert-nano",
            max_seq_len=args.max_seq_len or 512,
            out=str(out / "scratch"),
            **({"epochs": args.epochs} if args.epochs else {}),  # else the preset's 3
            **common,
        )
        print(f"from scratch: test accuracy {result['val_accuracy']:.4f}")
    elif args.stage == "mlm":
        seq = args.max_seq_len or 128
        pretrained = lmforge.train(
            task="mlm",
            tokenizer="wordpiece",
            vocab_size=20000,
            preset="bert-tiny",
            max_seq_len=seq,
            epochs=args.mlm_epochs,
            out=str(out / "mlm"),
            **common,
        )
        print(f"MLM: masked accuracy {pretrained['val_accuracy']:.4f}")
        budget = dict(max_steps=args.train_steps or 800, lr=5e-4, warmup_steps=50)
        tuned = lmforge.train(
            task="classify",
            init_from=str(out / "mlm"),
            max_seq_len=seq,
            out=str(out / "mlm-tuned"),
            **budget,
            **common,
        )
        tokenizer = str(out / "mlm" / "tokenizer")  # the same vocabulary, random weights
        fresh = lmforge.train(
            task="classify",
            tokenizer=tokenizer,
            preset="bert-tiny",
            max_seq_len=seq,
            out=str(out / "random-tuned"),
            **budget,
            **common,
        )
        print(
            f"fine-tuned: pretrained {tuned['val_accuracy']:.4f}, "
            f"random init {fresh['val_accuracy']:.4f}"
        )
    else:
        budget = dict(max_steps=args.train_steps) if args.train_steps else dict(epochs=1)
        result = lmforge.train(
            task="classify",
            preset="all-minilm-l6-v2",
            max_seq_len=args.max_seq_len or 256,
            out=str(out / "minilm"),
            **budget,
            **common,
        )
        print(f"all-MiniLM-L6-v2 fine-tuned: test accuracy {result['val_accuracy']:.4f}")


if __name__ == "__main__":
    main()
