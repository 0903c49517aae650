"""The `microxds` command line. Configuration objects are built here; nothing runs at import time."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hbone import logsetup
from hbone.commands.toplevel import add_common_flags, run_command
from hbone.errors import HboneError, UnsupportedDependency
from microxds.errors import MicroxdsError

# Modules under microxds.commands that contribute subcommands, in help order.
COMMAND_MODULES = ("serve", "validate", "bootstrap", "store", "dump", "status", "agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microxds", description="A small, fast xDS control plane (ADS SotW + Delta) and xDS debugging client."
    )
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"microxds.commands.{name}").register(sub)
    logsetup.add_format_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except UnsupportedDependency as e:  # one line, no traceback: what to install
        print(f"microxds: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command in ("serve", "agent") and not args.verbose:
        level = logging.INFO  # a server reports what it loaded and where it listens
    logsetup.configure(level, args.log_format)
    return run_command("microxds", args, args.func, (MicroxdsError, HboneError))


if __name__ == "__main__":
    sys.exit(main())
