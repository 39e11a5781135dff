"""Tests for lmforge.cli.main: the verbs, --help with defaults, and usage errors as one line."""

import argparse
import dataclasses
import re
import subprocess
import sys

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
        (["smaple", "x"], "invalid choice: 'smaple' (did you mean 'sample'?)"),
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


def test_a_bare_lmforge_prints_the_help(capsys):
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: lmforge") and "    sample " in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("verb", ["train", "sample", "eval", "inspect", "prepare"])
def test_abbreviations_are_refused_with_the_verbs_help_and_a_guess(verb, capsys):
    flag = {"train": "--max-step", "sample": "--max-new-token", "eval": "--batch-siz",
            "inspect": "--top", "prepare": "--vocab-siz"}[verb]  # fmt: skip
    run = {"train": [], "prepare": ["--out", "o"]}.get(verb, ["x"])  # what else each needs
    assert main([verb, *run, flag, "3"]) == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {flag} 3" in err and f"see `lmforge {verb} --help`" in err
    if verb != "inspect":  # --top is too far from --top-k for a guess
        assert "(did you mean --" in err


def test_help_imports_no_torch():
    code = (
        "import sys; from lmforge.cli.main import main; main(['--help']); "
        "print('torch' in sys.modules, 'lmforge.models.gpt' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_the_presets_table_is_aligned(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1  # every family starts in one column
    abouts = {line.index(a) for line in lines for a in [line.split()[2]]}
    assert len(abouts) == 1  # and every description


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
OTHER_VERB = re.compile(r"`lmforge (\w+)[^`]*`")


def _flags_named(err: str, verb: str) -> set[str]:
    """Flags an error line tells the user to pass to `verb` (not inside `lmforge OTHER ...`,
    nor the unrecognized ones it quotes)."""
    err = re.sub(r"unrecognized arguments: [^(;]*", "", err)
    for m in OTHER_VERB.finditer(err):
        if m.group(1) != verb:
            err = err.replace(m.group(0), "")
    return set(FLAG.findall(err))


def test_every_flag_an_error_names_exists_on_its_verb(char_run, hf_gpt2, tmp_path, capsys):
    accents = tmp_path / "accents.txt"
    accents.write_text("JULIÉT!\n" * 5, encoding="utf-8")
    yaml = tmp_path / "c.yaml"
    yaml.write_text("tempreature: 1\n")
    run, hf = str(char_run), str(hf_gpt2)
    cases = [
        ["sample", run, "--prompt", "É"],
        ["sample", run, "--prompt", "É", "--unknown-token", "é"],
        ["inspect", run, "--prompt", "É", "--out", str(tmp_path / "r.html")],
        ["eval", run, "--data", str(accents)],
        ["eval", hf],
        ["eval", run, "--unknown-token", "?", "--data", str(tmp_path / "missing.txt")],
        ["sample", hf, "--unknown-token", "?"],
        ["sample", run, "--config", str(yaml)],
        ["predict", run, "some text"],
        ["sample", run, "--temprature", "1"],
        ["inspect", run],
    ]
    parsers = _verb_parsers()
    for argv in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().split("\r")[-1]  # after any progress bar
        assert err.startswith("lmforge: error:") and "\n" not in err, err
        own = {s for a in parsers[argv[0]]._actions for s in a.option_strings}
        named = _flags_named(err, argv[0])
        assert named <= own, (argv, err, named - own)
