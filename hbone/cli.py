"""The `hbone` command line. Configuration objects are built here; nothing runs at import time."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

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


@contextlib.contextmanager
def event_loop_policy() -> Iterator[str]:
    """Run the commands' `asyncio.run()` on uvloop when it is importable (DESIGN §4); `HBONE_NO_UVLOOP=1` opts out.

    uvloop gave 1.15x on TLS and 1.31x on gRPC calls (performance-notes.md). The driver is a pure
    `asyncio.BufferedProtocol` (uvloop's buffered TLS path needs that) and never pauses reading in
    `connection_made()` (uvloop ignores it there). A policy rather than a runner argument because each command
    calls `asyncio.run()` itself; the previous policy is restored so in-process callers (tests) are unaffected.
    Yields the loop name ("uvloop" or "asyncio").
    """
    if os.environ.get("HBONE_NO_UVLOOP", "") not in ("", "0"):
        yield "asyncio"
        return
    try:
        import uvloop
    except ImportError:
        yield "asyncio"
        return
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield "uvloop"
    finally:
        asyncio.set_event_loop_policy(previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with event_loop_policy() as loop_name:
            logging.getLogger("hbone.cli").debug("event loop: %s", loop_name)
            result = args.func(args)
    except HboneError as e:
        print(f"hbone: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
