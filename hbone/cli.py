"""The `hbone` command line. Configuration objects are built here; nothing runs at import time."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hbone import logsetup
from hbone.commands.toplevel import add_common_flags, event_loop_policy, run_command
from hbone.errors import HboneError, UnsupportedDependency

__all__ = ["build_parser", "event_loop_policy", "main"]

# Modules under hbone.commands that contribute subcommands, in help order.
COMMAND_MODULES = ("ca", "demo", "mesh", "tunnel", "grpc", "frontends")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbone", description="HBONE tunnels: HTTP/2 CONNECT over mTLS.")
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"hbone.commands.{name}").register(sub)
    logsetup.add_format_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except UnsupportedDependency as e:  # one line, no traceback: what to install
        print(f"hbone: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logsetup.configure(level, args.log_format)
    return run_command("hbone", args, args.func, (HboneError,))


if __name__ == "__main__":
    sys.exit(main())
