"""What the benchmarks share: the median wall time of a step after untimed warm-up steps, the
machine fields every JSON line carries (CPU, torch's kernels, threads, torch version), and the
printing of a result row."""

import json
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


def machine_fields() -> dict:
    """`cpu`, `cpu_features`, `cpu_capability`, `threads`, `torch` (and oneDNN's ISA cap) of this
    process, so every figure names the machine and kernels it came from."""
    from lmforge.device import machine_summary

    m = machine_summary()
    return {k: m[k] for k in ("cpu", "cpu_features", "cpu_capability", "onednn_max_isa")} | {
        "threads": m["threads"],
        "torch_version": m["torch"],
    }


def use_all_cpus() -> int:
    """Set torch's intra-op threads to the cores this process may use; returns the count."""
    import torch

    from lmforge.system import usable_cpus

    torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()


def print_row(row: dict, as_json: bool) -> None:
    """One JSON line (--json), else one `name: value` line per field."""
    if as_json:
        print(json.dumps(row))
        return
    for k, v in row.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
