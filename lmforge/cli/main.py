"""Builds the `lmforge` parser from the command modules and maps errors to exit codes.

Every user-caused error (LmforgeError, a bad flag, an unreadable path) becomes one line,
`lmforge: error: <message>`, on stderr and exit 2. A command module defines
`add_parser(subparsers)` and `run(args) -> int`; only the module of the verb being run is
imported (`lmforge --help` lists the verbs from COMMANDS without importing torch).
"""

import argparse
import difflib
import importlib
import logging
import os
import sys

from lmforge import __version__
from lmforge.errors import ConfigError, LmforgeError

# verb -> the one line `lmforge --help` shows for it (each module's add_parser says the same)
COMMANDS = {
    "prepare": "tokenize a corpus into memory-mapped token files",
    "train": "train a model",
    "sample": "generate text from a run",
    "chat": "chat with a run in the terminal",
    "eval": "evaluate a run",
    "predict": "classify texts with a classifier run",
    "inspect": "next-token tables and attention maps for prompts",
    "plot": "plot loss curves of runs",
    "convert": "convert between run folders and Hugging Face folders",
    "quantize": "write a run with int8 weights",
    "serve": "serve a run over an OpenAI-compatible HTTP API",
    "presets": "list model presets",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become the one error line main() prints; flags are
    never abbreviated (`--max-step` is a typo, not --max-steps)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser(verbs=None) -> argparse.ArgumentParser:
    """The `lmforge` parser; only the verbs in `verbs` (default: all) get their full options."""
    parser = _Parser(
        prog="lmforge",
        description="Make text language models: prepare data, train, evaluate, sample.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for name, about in COMMANDS.items():
        if verbs is not None and name not in verbs:
            sub.add_parser(name, help=about, add_help=False)  # listed; its module not imported
            continue
        module = importlib.import_module(f"lmforge.cli.{name}_cmd")
        p = module.add_parser(sub)
        p.add_argument(
            "--config", metavar="FILE", help="YAML/JSON file of options; flags win (default: none)"
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
        p.set_defaults(_run=module.run)
    return parser


def option_names(verb: str | None = None) -> set[str]:
    """The option names (dests) of one verb, or of every verb: what a --config file may set."""
    sub = _subparsers(build_parser(None if verb is None else [verb]))
    names = set()
    for name, p in sub.choices.items():
        if verb is None or name == verb:
            names |= {a.dest for a in p._actions if a.dest != argparse.SUPPRESS}
    return names - {"help", "config", "debug"}


def _parse(argv: list[str]) -> argparse.Namespace:
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb not in COMMANDS:
        close = difflib.get_close_matches(verb, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        choices = ", ".join(map(repr, COMMANDS))
        build_parser([]).error(
            f"argument VERB: invalid choice: {verb!r}{hint} (choose from {choices})"
        )
    parser = build_parser([verb] if verb in COMMANDS else [])
    args, extra = parser.parse_known_args(argv)
    if extra:  # report on the verb's own parser: its --help, and the flag that was meant
        verb_parser = _subparsers(parser).choices[args.command]
        known = [s for a in verb_parser._actions for s in a.option_strings if s.startswith("--")]
        flags = [a.split("=")[0] for a in extra if a.startswith("--")]
        close = [m for f in flags for m in difflib.get_close_matches(f, known, n=1, cutoff=0.75)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        verb_parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run `lmforge ARGV...`; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_now(_main(sys.argv[1:]))  # a torchrun child started as `lmforge` / `-m lmforge`
    return _main(sys.argv[1:] if argv is None else argv)


def _exit_now(code: int) -> None:
    """End a torchrun child without C++ teardown, once its run has ended, its process group is
    destroyed and its files are written (atomically, closed): a child that finished its run
    sometimes still aborted at interpreter exit ("terminate called without an active
    exception", SIGABRT; the FSDP -> DDP resume test on a busy 2-core machine, about one full
    suite in four), which turned a finished run into a failed one."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str]) -> int:
    if not argv:  # a bare `lmforge`: what it can do, not an error
        build_parser([]).print_help()
        return 0
    try:
        args = _parse(argv)
    except SystemExit as e:  # --help and --version
        return int(e.code or 0)
    except LmforgeError as e:
        return _fail(e)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    from lmforge import progress

    progress.enable(is_main and (sys.stderr.isatty() or not getattr(args, "json", False)))
    try:
        return int(args._run(args) or 0)
    except LmforgeError as e:
        if args.debug:
            raise
        code = _fail(e)
        if getattr(e, "exit_now", False):  # e.g. a dead torchrun peer: skip C++ teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except OSError as e:  # a path that cannot be written or read, a full disk
        if args.debug:
            raise
        return _fail(f"{e}; check the path, its permissions and the free disk space")
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


def _fail(message) -> int:
    print(f"lmforge: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
