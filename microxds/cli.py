"""The `microxds` command line. Configuration objects are built here; nothing runs at import time."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hbone.cli import event_loop_policy
from hbone.errors import HboneError
from microxds.errors import MicroxdsError

# Modules under microxds.commands that contribute subcommands, in help order.
COMMAND_MODULES = ("serve", "dump", "agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microxds", description="A small, fast xDS control plane (ADS SotW + Delta) and xDS debugging client."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"microxds.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.command in ("serve", "agent") and not args.verbose:
        level = logging.INFO  # a server reports what it loaded and where it listens
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with event_loop_policy():  # uvloop when installed, as `hbone` (HBONE_NO_UVLOOP=1 opts out)
            result = args.func(args)
    except (MicroxdsError, HboneError) as e:
        print(f"microxds: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
