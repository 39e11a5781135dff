"""Builds the `lmforge` parser from the command modules and maps errors to exit codes.

Every user-caused error (LmforgeError) becomes `lmforge: error: <message>` on stderr and exit 2.
A command module defines `add_parser(subparsers)` and `run(args) -> int`.
"""

import argparse
import importlib
import logging
import sys

from lmforge import __version__
from lmforge.errors import LmforgeError

COMMANDS = ["prepare", "train", "sample", "eval", "presets"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Make text language models: prepare data, train, evaluate, sample.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lmforge.cli.{name}_cmd")
        p = module.add_parser(sub)
        p.add_argument("--config", metavar="FILE", help="YAML/JSON file of options; flags win")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from lmforge import progress

    progress.enable(sys.stderr.isatty() or not getattr(args, "json", False))
    try:
        return int(args._run(args) or 0)
    except LmforgeError as e:
        if args.debug:
            raise
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
