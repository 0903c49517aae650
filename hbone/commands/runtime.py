"""What every long-running command shares: stop on SIGINT/SIGTERM, then drain; the listeners' connection cap."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from hbone.proxy.listener import MAX_CONNECTIONS, set_max_connections


def stop_on_signals(stop: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM on the running loop (where the platform allows signal handlers)."""
    event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event


def add_listener_flags(parser: argparse.ArgumentParser) -> None:
    """`--max-connections`, for the commands whose listeners accept through `hbone.proxy.listener`."""
    parser.add_argument(
        "--max-connections", type=int, metavar="N",
        help=f"connections each listener serves at once; more are closed at accept (default {MAX_CONNECTIONS})",
    )  # fmt: skip


def apply_listener_flags(args: argparse.Namespace) -> None:
    if getattr(args, "max_connections", None) is not None:
        set_max_connections(args.max_connections)
