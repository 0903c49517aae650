"""The `hbone` command line. Configuration objects are built here; nothing runs at import time."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hbone.errors import HboneError

# Modules under hbone.commands that contribute subcommands, in help order.
COMMAND_MODULES = ("ca", "demo", "tunnel", "grpc", "frontends")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbone", description="HBONE tunnels: HTTP/2 CONNECT over mTLS.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"hbone.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = args.func(args)
    except HboneError as e:
        print(f"hbone: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
