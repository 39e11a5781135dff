"""files.write_atomic: text, bytes or a writer function; a failed write leaves the old file."""

import pytest

from lmforge.files import write_atomic, write_folder_atomic


def test_text_bytes_and_writer_functions_land_whole(tmp_path):
    write_atomic(tmp_path / "a.txt", "é\n")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.txt", lambda tmp: open(tmp, "w").write("made"))
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text() == "made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    write_atomic(path, "old")

    def half_then_crash(tmp):
        open(tmp, "w").write("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"

    def crash(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomic(out, crash)
    assert list(tmp_path.iterdir()) == []  # no temporary folder, no parents left behind

    write_folder_atomic(out, lambda tmp: (tmp / "a.txt").write_text("one"))
    write_folder_atomic(out, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert [p.name for p in out.iterdir()] == ["b.txt"]  # the new folder, not a mix
    assert [p.name for p in out.parent.iterdir()] == ["out"]
