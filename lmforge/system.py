"""Facts about the machine that need no torch import."""

import os


def usable_cpus() -> int:
    """The cores this process may run on (its affinity where the OS has one, e.g. Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
