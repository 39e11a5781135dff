"""Turns an options dataclass into argparse flags, and flags + `--config FILE` back into it.

Precedence, lowest first: dataclass defaults, preset values, the config file, explicit flags.
Each field becomes `--kebab-name`; help text comes from `field(metadata={"help": ...})`, followed
by "(default: X)", "(required)" (metadata "required") or what absence means (metadata
"default_help").
"""

import argparse
import dataclasses
import difflib
import json
import re
import textwrap
import types
import typing
from pathlib import Path

from lmforge.errors import ConfigError

_UNSET = object()

# what --quantize accepts (lmforge.layers.quant.KINDS, spelled here so --help imports no torch)
QUANTIZE_KINDS = ("int8",)


def quantize_option():
    """The --quantize field of the verbs that load a model to run it (sample, eval, inspect)."""
    return dataclasses.field(
        default=None,
        metadata={
            "help": "int8: int8 weights with a scale per output channel in every linear layer "
            "and the output head (embeddings stay exact)",
            "default_help": "the run's own weights",
            "choices": QUANTIZE_KINDS,
        },
    )


def adapter_option():
    """The --adapter field of the verbs that load a model to run it (sample, eval)."""
    return dataclasses.field(
        default=None,
        metadata={
            "help": "a PEFT LoRA adapter folder to apply on top of the model (save_pretrained's "
            "output, or a LoRA run's adapter/)",
            "default_help": "none; a LoRA run brings its own",
        },
    )


class _Append(argparse.Action):
    """action="append" that starts a new list instead of appending to the (sentinel) default."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, None)
        values = values if isinstance(values, list) else [values]  # nargs="+" gives a list
        setattr(namespace, self.dest, [*(items if isinstance(items, list) else []), *values])


def _base_type(tp):
    """Strip `X | None` to X; return (type, is_list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


# "(default: x)" or "(default x)" already in a help text, or "(required)"
_DEFAULT_SHOWN = re.compile(r"\((default\b|required\))")


def show_default(value) -> str:
    """A default as --help shows it: none for None, quoted when it is blank ('\\n')."""
    if value is None:
        return "none"
    if isinstance(value, str) and not value.strip():
        return repr(value)
    return str(value)


def _shown(f: dataclasses.Field) -> str:
    """What a field's absence means: metadata["default_help"] ("RUN/inspect.html"), else its
    default value."""
    if "default_help" in f.metadata:
        return f.metadata["default_help"]
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return show_default(f.default_factory())  # type: ignore[misc]
    return show_default(None if f.default is dataclasses.MISSING else f.default)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, without breaking lines inside hyphenated names (gpt-baby)."""

    def _split_lines(self, text, width):
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)


def add_options(
    parser: argparse.ArgumentParser,
    cls,
    skip: tuple[str, ...] = (),
    shown: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of dataclass `cls` (defaults shown in --help, not applied).

    Args:
        shown: what --help says a field's absence means, where not its dataclass default
            (`lmforge train`: "the preset's; gpt-baby: 0.008")."""
    hints = typing.get_type_hints(cls)
    shown = shown or {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if f.name in shown:  # replaces the default the help text describes, if any
            help_text = re.sub(r"\s*\(default\b[^)]*\)", "", help_text)
        if not _DEFAULT_SHOWN.search(help_text):  # a help text may describe its own default
            # a required option is not argparse-required: it may come from --config instead
            absent = shown.get(f.name) or _shown(f)
            absent = "(required)" if f.metadata.get("required") else f"(default: {absent})"
            help_text = f"{help_text} {absent}".strip()
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=_UNSET, help=help_text)
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif is_list:  # repeatable; metadata nargs="+" also takes several after one flag
            nargs = f.metadata.get("nargs")
            metavar = f.metadata.get("metavar")
            parser.add_argument(flag, action=_Append, type=tp, nargs=nargs, metavar=metavar, **kw)
        else:
            parser.add_argument(flag, type=tp, metavar=f.metadata.get("metavar"), **kw)


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON options file into a dict with snake_case keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the --config path")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"cannot read config file {path}: {first}; fix its YAML/JSON syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def explicit_flags(args: argparse.Namespace) -> dict:
    """The options the user typed on the command line (those not left at the sentinel)."""
    return {k: v for k, v in vars(args).items() if v is not _UNSET}


def _every_verbs_options() -> set[str]:
    from lmforge.cli.main import option_names  # builds every verb's parser: only when needed

    return option_names()


def own_keys(file_opts: dict, names: set[str]) -> dict:
    """The --config keys a verb whose options are `names` takes: another verb's keys (`prompt`
    of a sampling config given to `train`) are dropped, so one file serves every verb; keys no
    verb has stay, for the verb to refuse with its own message."""
    if all(k in names for k in file_opts):
        return dict(file_opts)
    others = _every_verbs_options() - names
    return {k: v for k, v in file_opts.items() if k in names or k not in others}


def layered(args: argparse.Namespace, names: set[str]) -> tuple[dict, dict]:
    """(the --config file's options, the flags typed among `names`): what every verb layers on
    its defaults and preset, in that order. A flag typed wins even when it equals the default."""
    file_opts = read_config_file(args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in explicit_flags(args).items() if k in names}
    return file_opts, flags


def from_args(args: argparse.Namespace, cls):
    """A `cls` from its defaults, the --config file, then the flags typed (those of its fields):
    how every verb but `train` (whose options span TrainConfig and a model config) builds its
    options."""
    return build(cls, *layered(args, {f.name for f in dataclasses.fields(cls)}))


def build(cls, *layers: dict, strict: bool = True):
    """Make a `cls` from dicts applied in order (later wins).

    A key that is an option of another verb (`data` of a training config given to `sample`) is
    ignored, so one --config file serves every verb; a key no verb knows raises ConfigError.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if k not in names:
                if strict and k not in _every_verbs_options():
                    close = difflib.get_close_matches(k, names, n=1)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    known = ", ".join(sorted(names))
                    raise ConfigError(
                        f"unknown option '{k}' for {cls.__name__}; {hint}known: {known}"
                    )
                continue
            merged[k] = v
    try:
        return cls(**merged)
    except TypeError as e:
        raise ConfigError(f"invalid options for {cls.__name__}: {e}") from None
