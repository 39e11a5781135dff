"""Loss curves from the `metrics.jsonl` of run folders: several runs on one figure, to compare.

The trainer writes train rows {step, tokens, train_loss, elapsed_s, epoch, ...}, evaluation rows
{step, tokens, val_loss, elapsed_s, epoch} and, at each epoch's end, {step, tokens, epoch,
epoch_loss, elapsed_s}; any of step, tokens, wall time or epochs can be the x axis.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ConfigError, DataError
from lmforge.inspect.render import FIGURE_SUFFIXES, check_out_path, import_pyplot, save_figure

METRICS_FILE = "metrics.jsonl"
X_AXES = {"tokens": "tokens", "time": "elapsed_s", "step": "step", "epoch": "epoch"}  # --x -> key


@dataclass
class RunMetrics:
    """The loss rows of one run, in the order they were written."""

    name: str
    path: Path
    train: list[dict] = field(default_factory=list)  # rows with train_loss
    val: list[dict] = field(default_factory=list)  # rows with val_loss
    epochs: list[dict] = field(default_factory=list)  # rows with epoch_loss


def read_metrics(run: str | Path) -> RunMetrics:
    """The train and validation rows of a run folder (or of a metrics.jsonl file itself)."""
    run = Path(run)
    path = run if run.is_file() else run / METRICS_FILE
    if not run.exists():
        raise DataError(f"{run}: no such run folder; pass a folder written by lmforge train")
    if not path.is_file():
        raise DataError(
            f"{run} has no {METRICS_FILE}; pass a run folder written by lmforge train "
            "(it logs there every --log-every steps)"
        )
    metrics = RunMetrics(name=(run.parent if run.is_file() else run).name or str(run), path=run)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path}: line {number} is not JSON; fix or delete that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; fix or delete it")
        if "train_loss" in row:
            metrics.train.append(row)
        if "val_loss" in row:
            metrics.val.append(row)
        if "epoch_loss" in row:
            metrics.epochs.append(row)
    if not metrics.train and not metrics.val and not metrics.epochs:
        raise DataError(
            f"{path} holds no train_loss or val_loss rows yet; train longer than --log-every steps"
        )
    return metrics


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds > 3 * 3600:
        return "h", 3600.0
    if seconds > 600:
        return "min", 60.0
    return "s", 1.0


def loss_figure(runs: list[RunMetrics], x: str = "tokens", title: str | None = None):
    """One figure: each run's train loss (solid) and validation loss (dashed, dots), one colour
    per run, against tokens, wall time, steps or epochs (`x` = "tokens" | "time" | "step" |
    "epoch"); against epochs, also the mean train loss of each epoch (squares)."""
    if x not in X_AXES:
        raise ConfigError(f"unknown x axis {x!r}; use one of {', '.join(X_AXES)}")
    plt = import_pyplot()
    from matplotlib.ticker import EngFormatter

    key = X_AXES[x]
    longest = max(
        (r[key] for m in runs for r in m.train + m.val + m.epochs if key in r), default=0.0
    )
    unit, scale = _time_unit(longest) if x == "time" else ("", 1.0)
    names = [m.name for m in runs]
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for index, m in enumerate(runs):
        color = f"C{index % 10}"
        label = m.name if names.count(m.name) == 1 else str(m.path)
        train = [r for r in m.train if key in r]
        val = [r for r in m.val if key in r]
        epochs = [r for r in m.epochs if key in r] if x == "epoch" else []
        if train:
            xs = [r[key] / scale for r in train]
            ax.plot(xs, [r["train_loss"] for r in train], color=color, label=f"{label} train")
        if epochs:
            ax.plot(
                [r[key] / scale for r in epochs],
                [r["epoch_loss"] for r in epochs],
                color=color,
                linestyle="none",
                marker="s",
                markersize=5,
                label=f"{label} train, mean of each epoch",
            )
        if val:
            xs = [r[key] / scale for r in val]
            ax.plot(
                xs,
                [r["val_loss"] for r in val],
                color=color,
                linestyle="--",
                marker="o",
                markersize=4,
                label=f"{label} validation",
            )
    xlabel = {
        "tokens": "training tokens",
        "time": f"wall time ({unit})",
        "step": "step",
        "epoch": "epoch",
    }[x]
    ax.set_xlabel(xlabel)
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "loss: " + ", ".join(dict.fromkeys(names)), fontsize=11)
    return fig


def plot_losses(
    runs: list[str | Path], out: str | Path, x: str = "tokens", title: str | None = None
) -> Path:
    """Draw the loss curves of one or more run folders into `out` (.png, .svg or .pdf).

    Example:
        plot_losses(["runs/wine-lr1e-3", "runs/wine-lr3e-4"], "loss.png", x="time")
    """
    if not runs:
        raise ConfigError("plot needs at least one run folder")
    out = check_out_path(out, "--out", FIGURE_SUFFIXES)
    if x not in X_AXES:
        raise ConfigError(f"unknown x axis {x!r}; use one of {', '.join(X_AXES)}")
    metrics = [read_metrics(r) for r in runs]
    return save_figure(loss_figure(metrics, x, title), out)
