"""Builds the `lmforge` parser from the command modules and maps errors to exit codes.

Every user-caused error (LmforgeError, a bad flag, an unreadable path) becomes one line,
`lmforge: error: <message>`, on stderr and exit 2. A command module defines
`add_parser(subparsers)` and `run(args) -> int`.
"""

import argparse
import importlib
import logging
import os
import sys

from lmforge import __version__
from lmforge.errors import ConfigError, LmforgeError

COMMANDS = [
    "prepare",
    "train",
    "sample",
    "eval",
    "predict",
    "inspect",
    "plot",
    "convert",
    "presets",
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become the one error line main() prints."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmforge",
        description="Make text language models: prepare data, train, evaluate, sample.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lmforge.cli.{name}_cmd")
        p = module.add_parser(sub)
        p.add_argument(
            "--config", metavar="FILE", help="YAML/JSON file of options; flags win (default: none)"
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `lmforge ARGV...`; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
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
