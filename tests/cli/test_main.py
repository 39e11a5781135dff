"""Tests for lmforge.cli.main: the verbs, --help with defaults, and usage errors as one line."""

import argparse
import dataclasses
import re

import pytest

from lmforge import __version__
from lmforge.cli.main import COMMANDS, build_parser, main
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
        shown = shown.replace("(default: None)", "(default: none)")
        assert f"{f.metadata['help']} {shown}" in out
    for extra in ("--out OUT output folder (required)", "(default: off)", "(default: none)"):
        assert extra in out


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each verb's parser, taken from the real `lmforge` parser."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


# "(default: x)", "(default x)" (a help text that explains its own default) or "(required)"
DEFAULT_SHOWN = re.compile(r"\((default\b[^)]*|required)\)")


@pytest.mark.parametrize("verb", list(_verb_parsers()))
def test_every_option_of_every_verb_shows_its_default(verb, capsys):
    parser = _verb_parsers()[verb]
    options = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]
    options = [a for a in options if not isinstance(a, argparse._HelpAction)]
    assert {"--config", "--debug"} <= {s for a in options for s in a.option_strings}
    for action in options:
        shown = DEFAULT_SHOWN.findall(action.help or "")
        assert len(shown) == 1, f"{verb} {action.option_strings[0]}: {action.help!r}"
        assert "(default: None)" not in action.help  # absence is told in words: none, off, ...
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            assert action.help.endswith("(default: off)"), action.help
    # and --help prints them (argparse wraps lines, so compare with whitespace collapsed)
    assert main([verb, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for action in options:
        assert " ".join(action.help.split()) in out


def test_blank_and_missing_defaults_are_shown_in_words(capsys):
    assert main(["sample", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "text to continue (default: '\\n')" in out
    assert "random seed (default: none)" in out
    assert main(["inspect", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "HTML report (default: RUN/inspect.html when RUN is a folder" in out
    assert "(repeat for several prompts) (required)" in out


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
