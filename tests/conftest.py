"""Shared test fixtures: a fixed seed, tiny corpora in tmp_path, and the shared data folder."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(
    os.environ.get(
        "LMFORGE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


def shared_data(name: str) -> Path:
    """Path of a file in ../shared/data; fails (never skips) when it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(
            f"test data {path} is missing: these tests read ../shared/data (set LMFORGE_DATA_DIR "
            "to the folder that holds tinyshakespeare.txt, imdb-50k.csv.gz, ...)"
        )
    return path


# Tiny models gain nothing from a second thread, and thread hand-offs dominate their ops.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch, tmp_path):
    """Named datasets resolve to ../shared/data; the download cache lives in tmp_path."""
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    """A small plain-text corpus (about 20 KB) written to tmp_path."""
    lines = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
        "MERCUTIO: A plague o' both your houses!",
    ]
    text = "\n".join(lines[i % 3] for i in range(360)) + "\n"
    path = tmp_path / "tiny.txt"
    path.write_text(text, encoding="utf-8")
    return path
