"""Loss curves drawn from the metrics.jsonl of real (tiny) training runs, and bad run folders."""

import csv
import random
import shutil

import pytest

import lmforge
from lmforge.errors import ConfigError, DataError
from lmforge.inspect.plot import loss_figure, plot_losses, read_metrics

TEMPLATE = "wine review : {country} : {province} : {variety} : {description}"


def write_reviews(path, n=80):
    """A tiny wine-review CSV in the Kaggle layout (unnamed index column first)."""
    rng = random.Random(0)
    places = [("Germany", "Mosel", "Riesling"), ("Italy", "Tuscany", "Sangiovese"),
              ("US", "California", "Pinot Noir"), ("France", "Bordeaux", "Merlot")]  # fmt: skip
    words = "crisp ripe dry apple cherry lime oak spice tannins finish bright soft".split()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "country", "description", "province", "variety"])
        for i in range(n):
            country, province, variety = rng.choice(places)
            text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "."
            w.writerow([i, country, text.capitalize(), province, variety])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    data = write_reviews(root / "wine.csv")
    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        for name, lr in (("lr-high", 3e-3), ("lr-low", 3e-4)):
            lmforge.train(
                data=str(data),
                tokenizer="word",
                field=TEMPLATE,
                vocab_size=100,
                preset="gpt-tiny-wine",
                num_layers=1,
                embed_dim=32,
                head_dim=16,
                ffn_dim=32,
                block_size=24,
                max_seq_len=24,
                batch_size=8,
                max_steps=12,
                log_every=2,
                eval_every=4,
                lr=lr,
                threads=1,
                out=str(root / name),
            )
            out.append(root / name)
    return out


def test_read_metrics_splits_train_and_validation_rows(runs):
    m = read_metrics(runs[0])
    assert m.name == "lr-high"
    assert [r["step"] for r in m.train] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in m.val] == [4, 8, 12] and m.val[-1].get("final")
    assert all(r["train_loss"] > 0 for r in m.train)


@pytest.mark.parametrize(
    ("x", "key"), [("tokens", "tokens"), ("time", "elapsed_s"), ("step", "step")]
)
def test_figure_has_train_and_validation_curves_per_run(runs, x, key):
    metrics = [read_metrics(r) for r in runs]
    fig = loss_figure(metrics, x=x)
    ax = fig.axes[0]
    lines = ax.get_lines()
    labels = [line.get_label() for line in lines]
    assert labels == ["lr-high train", "lr-high validation", "lr-low train", "lr-low validation"]
    train_line = lines[2]
    expected_x = [r[key] for r in metrics[1].train]
    assert list(train_line.get_xdata()) == pytest.approx(expected_x)
    assert list(train_line.get_ydata()) == [r["train_loss"] for r in metrics[1].train]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_losses_writes_the_figure(runs, tmp_path):
    out = plot_losses(runs, tmp_path / "loss.png", x="time", title="two learning rates")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 300_000
    svg = plot_losses(runs[:1], tmp_path / "loss.svg")
    assert svg.read_text().lstrip().startswith("<?xml")


def test_two_runs_with_one_name_are_told_apart_by_path(runs, tmp_path):
    twin = tmp_path / runs[0].name
    shutil.copytree(runs[0], twin)
    fig = loss_figure([read_metrics(runs[0]), read_metrics(twin)])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[0] == f"{runs[0]} train" and labels[2] == f"{twin} train"


def test_bad_run_folders(tmp_path):
    with pytest.raises(DataError, match="no such run folder"):
        read_metrics(tmp_path / "missing")
    with pytest.raises(DataError, match="has no metrics.jsonl"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match="no train_loss or val_loss rows"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "tr\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        read_metrics(tmp_path)


def test_bad_options(runs, tmp_path):
    with pytest.raises(ConfigError, match="unknown x axis"):
        plot_losses(runs, tmp_path / "a.png", x="epochs")
    with pytest.raises(ConfigError, match="does not exist"):
        plot_losses(runs, tmp_path / "nope" / "a.png")
    with pytest.raises(ConfigError, match=".png, .svg, .pdf"):
        plot_losses(runs, tmp_path / "a.jpeg")
