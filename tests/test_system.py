"""usable_cpus: the process's affinity where the OS has one, else the machine's CPU count."""

import os

from lmforge.system import usable_cpus


def test_usable_cpus_follows_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cpus() == 3


def test_usable_cpus_without_affinity_counts_the_machine(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown
    assert usable_cpus() == 1
