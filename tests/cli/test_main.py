"""Tests for lmforge.cli.main: the verbs, --help with defaults, and usage errors as one line."""

import dataclasses

import pytest

from lmforge import __version__
from lmforge.cli.main import COMMANDS, main
from lmforge.data.prepare import PrepareConfig


def test_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lmforge")
    for verb in COMMANDS:
        assert f"    {verb} " in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lmforge {__version__}"


def test_prepare_help_shows_every_option_with_its_default(capsys):
    assert main(["prepare", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for f in dataclasses.fields(PrepareConfig):
        assert "--" + f.name.replace("_", "-") in out
        shown = "(required)" if f.metadata.get("required") else f"(default: {f.default})"
        assert f"{f.metadata['help']} {shown}" in out
    for extra in ("--out OUT output folder (required)", "(default: off)", "(default: none)"):
        assert extra in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fly"], "invalid choice: 'fly'"),
        ([], "required: VERB"),
        (["prepare", "--data", "x", "--out", "y", "--colour"], "unrecognized arguments: --colour"),
        (["prepare", "--num-proc", "two", "--out", "y"], "--num-proc: invalid int value"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("lmforge: error: ") and captured.err.count("\n") == 1
    assert expected in captured.err and "--help" in captured.err
    assert "usage:" not in captured.err and "Traceback" not in captured.err
