"""Learning-rate schedules as pure functions of (step, progress), so resuming needs no state.

`progress` in [0, 1] is how much of the run's budget is spent (steps, tokens, epochs or time,
whichever binds first), so a `--max-time` run decays to its floor exactly when time runs out.
"""

import math

from lmforge.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
WARMUP_SHARE = 0.1  # warm-up ends by this share of the budget, however many steps it asked for


def lr_at(
    step: int,
    progress: float,
    base_lr: float,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """Linear warmup over `warmup_steps`, then decay from base_lr to min_lr as progress -> 1.

    A short budget cuts the warm-up: it ends by WARMUP_SHARE of the budget at the latest, so a
    `--max-time 30s` run does not spend all of it below its peak learning rate."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    p = min(max(progress, 0.0), 1.0)
    if warmup_steps > 0 and step < warmup_steps:
        warm = max((step + 1) / warmup_steps, p / WARMUP_SHARE)
        if warm < 1.0:
            return base_lr * warm
    if schedule == "constant":
        return base_lr
    if schedule == "linear":
        return min_lr + (base_lr - min_lr) * (1.0 - p)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def parse_duration(text: str | float | int | None) -> float | None:
    """'90s', '10m', '1.5h', '600' -> seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except (ValueError, IndexError):
        raise ConfigError(f"cannot read duration {text!r}: write e.g. 90s, 10m or 1.5h") from None
    if value <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return value
