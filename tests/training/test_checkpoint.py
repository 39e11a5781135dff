"""Run folders: the write lock that keeps a second training process out."""

import os

import pytest

from lmforge.errors import CheckpointError
from lmforge.training.checkpoint import LOCK, run_lock


def test_a_held_lock_refuses_a_second_writer_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(CheckpointError, match=rf"pid {os.getpid()}\).*another --out"):
            with run_lock(run):
                pass
        (run / "config.json").write_text("{}")
    assert not (run / LOCK).exists() and (run / "config.json").is_file()
    with run_lock(run):  # free again once released
        pass


def test_a_folder_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    with pytest.raises(ValueError), run_lock(tmp_path / "new"):
        raise ValueError("bad data")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with run_lock(tmp_path / "mine"):
        pass
    assert (tmp_path / "mine").is_dir()  # a folder the user made stays
