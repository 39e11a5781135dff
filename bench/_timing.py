"""What the benchmarks share: the median wall time of a step after untimed warm-up steps."""

import statistics
import time
from collections.abc import Callable


def median_step_s(step: Callable[[], object], warmup: int, steps: int) -> float:
    """Run `step` `warmup` times untimed, then `steps` times timed; the median seconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
