"""`lmforge plot`: train and validation loss curves of one or more runs on one figure."""

from dataclasses import dataclass, field

from lmforge.cli import options
from lmforge.inspect.plot import X_AXES


@dataclass
class PlotConfig:
    out: str = field(default="loss.png", metadata={"help": "figure to write (.png, .svg, .pdf)"})
    x: str = field(
        default="tokens",
        metadata={
            "help": "x axis: training tokens, wall time, steps or epochs",
            "choices": list(X_AXES),
        },
    )
    title: str | None = field(default=None, metadata={"help": "figure title"})


def add_parser(sub):
    p = sub.add_parser(
        "plot",
        help="plot loss curves of runs",
        description="Draw train and validation loss from the metrics.jsonl of one or more run "
        "folders on one figure, to compare settings.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s)")
    options.add_options(p, PlotConfig)
    return p


def run(args) -> int:
    from lmforge.inspect.plot import plot_losses

    cfg = options.from_args(args, PlotConfig)
    path = plot_losses(args.runs, cfg.out, x=cfg.x, title=cfg.title)
    print(f"wrote {path}")
    return 0
