"""What both CLIs (`hbone`, `microxds`) do around a command: `--version`, logging, the event loop, and the one place
that turns any exception into the one-line error a user sees (exit 2), never a traceback (`-vv` adds it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import ssl
import sys
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata

DISTRIBUTION = "hbone-microxds"
EXIT_USAGE = 2  # what argparse uses for a bad command line; our "fix the input and retry" status too
EXIT_SIGPIPE = 141  # what a shell reports for a writer killed by SIGPIPE (`microxds dump … | head`)
EXIT_INTERRUPTED = 130


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """`--version` and `-v` on a top-level parser."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")


@contextlib.contextmanager
def event_loop_policy() -> Iterator[str]:
    """Run the commands' `asyncio.run()` on uvloop when it is importable (DESIGN §4); `HBONE_NO_UVLOOP=1` opts out.

    uvloop gave 1.15x on TLS and 1.31x on gRPC calls (docs/performance.md). The driver is a pure
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


def describe_error(exc: BaseException, user_errors: tuple[type[BaseException], ...]) -> str:
    """One line saying what went wrong and, where we can tell, what to change."""
    if isinstance(exc, user_errors):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        return _describe_os_error(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out (is the peer reachable? a longer --timeout may help)"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first} (please report it; -vv shows the traceback)"


def _describe_os_error(exc: OSError) -> str:
    text = str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{text}: another process is using this address; stop it or choose another port (:0 picks a free one)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{text}: that address is not on this machine; listen on one of its addresses (or 127.0.0.1)"
    if exc.errno == errno.EACCES and "bind" in text:
        return f"{text}: ports below 1024 need privileges; choose a port above 1023"
    if isinstance(exc, ConnectionRefusedError):
        return f"{text}: nothing is listening there; is the server running and the address right?"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or directory"
    if isinstance(exc, PermissionError) and exc.filename:
        return f"{exc.filename}: permission denied"
    return text or type(exc).__name__


def _silence_stdout() -> None:
    """After EPIPE on stdout, point it at /dev/null so the interpreter's final flush does not raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def run_command(
    prog: str,
    args: argparse.Namespace,
    func: Callable[[argparse.Namespace], int | None],
    user_errors: tuple[type[BaseException], ...],
) -> int:
    """Run one parsed command on the chosen event loop; map every exception to an exit status and one stderr line."""
    try:
        with event_loop_policy() as loop_name:
            logging.getLogger(f"{prog}.cli").debug("event loop: %s", loop_name)
            result = int(func(args) or 0)
            sys.stdout.flush()  # inside the handlers, so a reader that went away (`| head`) is no traceback
            return result
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): not an error worth a message
        _silence_stdout()
        return EXIT_SIGPIPE
    except Exception as exc:  # the one place every exception becomes a one-line message
        if getattr(args, "verbose", 0) >= 2:
            traceback.print_exc()
        for line in describe_error(exc, user_errors).splitlines() or [""]:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
