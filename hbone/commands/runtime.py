"""What every long-running command shares: stop on SIGINT/SIGTERM, then drain; the listeners' connection cap."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from hbone.configtext import parse_idle_timeout
from hbone.net.relay import IDLE_TIMEOUT
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
    """`--max-connections` and `--tunnel-idle-timeout`, for the commands whose listeners accept through
    `hbone.proxy.listener`."""
    parser.add_argument(
        "--max-connections", type=int, metavar="N",
        help=f"connections each listener serves at once; more are closed at accept (default {MAX_CONNECTIONS})",
    )  # fmt: skip
    parser.add_argument(
        "--tunnel-idle-timeout", metavar="DURATION",
        help=f"close a relayed connection idle this long either way (default {IDLE_TIMEOUT:g}s; 0: never)",
    )  # fmt: skip


def tunnel_idle_timeout(args: argparse.Namespace, default: float | None = IDLE_TIMEOUT) -> float | None:
    """`--tunnel-idle-timeout` if given, else `default` (a config file's value)."""
    value = getattr(args, "tunnel_idle_timeout", None)
    return default if value is None else parse_idle_timeout(value, "--tunnel-idle-timeout")


def apply_listener_flags(args: argparse.Namespace) -> None:
    if getattr(args, "max_connections", None) is not None:
        set_max_connections(args.max_connections)
