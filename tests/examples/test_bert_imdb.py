"""examples/bert_imdb.py: each stage runs end to end through lmforge.train() on a tiny CSV."""

import csv
import importlib.util
import json
import random
from pathlib import Path

from lmforge.models.bert import BertConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bert_imdb.py"
WORDS = {"positive": ["great", "moving", "fine", "joy"], "negative": ["awful", "dull", "slow"]}


def _example():
    spec = importlib.util.spec_from_file_location("bert_imdb", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reviews(path: Path, n: int = 96) -> Path:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment", "split"])
        for i in range(n):
            label = ("negative", "positive")[i % 2]
            words = [rng.choice(WORDS[label] + ["the", "film", "plot"]) for _ in range(10)]
            writer.writerow([" ".join(words), label, "train" if i < 0.75 * n else "test"])
    return path


def test_mlm_stage_pretrains_then_fine_tunes_both_ways(tmp_path, capsys):
    data = _reviews(tmp_path / "reviews.csv")
    out = tmp_path / "runs"
    argv = ["mlm", "--data", str(data), "--out", str(out), "--max-seq-len", "24", "--threads", "1"]
    _example().main([*argv, "--mlm-epochs", "1", "--train-steps", "3"])
    printed = capsys.readouterr().out
    assert "MLM: masked accuracy" in printed and "fine-tuned: pretrained" in printed
    tuned = json.loads((out / "mlm-tuned" / "config.json").read_text())
    fresh = json.loads((out / "random-tuned" / "config.json").read_text())
    # the same model and recipe, only the starting weights differ
    assert BertConfig(**tuned["model"]) == BertConfig(**fresh["model"])
    recipe = ("max_steps", "batch_size", "lr", "warmup_steps", "weight_decay", "seed")
    assert [tuned["train"][k] for k in recipe] == [fresh["train"][k] for k in recipe]
    assert tuned["train"]["max_steps"] == 3


def test_scratch_stage_on_a_seeded_subset(tmp_path, capsys):
    data = _reviews(tmp_path / "reviews.csv")
    argv = ["scratch", "--data", str(data), "--out", str(tmp_path / "runs"), "--threads", "1"]
    _example().main([*argv, "--max-seq-len", "24", "--epochs", "1", "--train-reviews", "40"])
    assert "from scratch: test accuracy" in capsys.readouterr().out
    (subset,) = (tmp_path / "runs").glob("subset-*.csv")
    rows = list(csv.DictReader(open(subset)))
    assert sum(r["split"] == "train" for r in rows) == 40
    assert sum(r["split"] == "test" for r in rows) == 24
