"""Progress bars: silent unless enabled; a bar an error stops is erased, a finished one stays."""

import io

import pytest

from lmforge import progress


def _screen(raw: str) -> str:
    """What a terminal shows: each line as left after its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in raw.split("\n")).strip()


def test_a_finished_bar_stays_and_an_error_erases_it(monkeypatch):
    monkeypatch.setattr(progress, "_enabled", True)
    done = io.StringIO()
    with progress.bar(10, "work", file=done) as bar:
        bar.update(10)
    assert "work: 100%" in _screen(done.getvalue()) and "10/10" in done.getvalue()
    failed = io.StringIO()
    with pytest.raises(ValueError), progress.bar(10, "work", file=failed) as bar:
        bar.update(3)
        raise ValueError("bad input")
    assert "work:" in failed.getvalue()  # it was drawn ...
    assert _screen(failed.getvalue()) == ""  # ... and is gone


def test_bars_are_silent_unless_enabled(monkeypatch):
    monkeypatch.setattr(progress, "_enabled", False)
    out = io.StringIO()
    with progress.bar(10, "work", file=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_by_default_bars_show_in_a_terminal_only(monkeypatch):
    monkeypatch.setattr(progress, "_enabled", None)  # lmforge.train() from Python, untouched

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stderr, shows in [(Terminal(), True), (io.StringIO(), False)]:
        monkeypatch.setattr(progress.sys, "stderr", stderr)
        out = io.StringIO()
        with progress.bar(10, "work", file=out) as bar:
            bar.update(10)
        assert ("work: 100%" in out.getvalue()) is shows
