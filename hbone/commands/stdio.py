"""stdin/stdout as asyncio streams, whatever they are: a pipe, a socket, a terminal, a regular file or /dev/null.

The event loop can only watch pipes, sockets and terminals (epoll refuses regular files and /dev/null; uvloop
aborts the interpreter on them). Anything else is bridged through an `os.pipe()` fed by a thread, so the command
keeps one code path (`connect_read_pipe`/`connect_write_pipe`) and `hbone connect … < file > out` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading

CHUNK = 64 * 1024
FLUSH_TIMEOUT = 30.0  # seconds to write out what the tunnel delivered to a bridged stdout


def _watchable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _copy(src: int, dst: int, close: int) -> None:
    """Copy until EOF or an error on either side, then close `close` (the pipe end this thread owns)."""
    try:
        while data := os.read(src, CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(close)


class Stdio:
    """Opened with `await Stdio.open()`; `await finish()` after the writer is closed flushes bridged output."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, threads: list[threading.Thread]):
        self.reader = reader
        self.writer = writer
        self._threads = threads

    @classmethod
    async def open(cls) -> Stdio:
        loop = asyncio.get_running_loop()
        threads: list[threading.Thread] = []
        in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
        if not _watchable(in_fd):
            r, w = os.pipe()
            threads.append(threading.Thread(target=_copy, args=(in_fd, w, w), daemon=True, name="stdin-bridge"))
            in_fd = r
        if not _watchable(out_fd):
            r, w = os.pipe()
            threads.append(threading.Thread(target=_copy, args=(r, out_fd, r), daemon=True, name="stdout-bridge"))
            out_fd = w
        for t in threads:
            t.start()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", buffering=0, closefd=in_fd > 2)
        )
        # A StreamReaderProtocol gives the write pipe the drain/close machinery StreamWriter expects.
        transport, proto = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
            os.fdopen(out_fd, "wb", buffering=0, closefd=out_fd > 2),
        )
        return cls(reader, asyncio.StreamWriter(transport, proto, None, loop), threads)

    async def finish(self) -> None:
        """Wait (bounded) for the output bridge to write what it holds; the input bridge is a daemon."""
        for t in self._threads:
            if t.name == "stdout-bridge":
                await asyncio.to_thread(t.join, FLUSH_TIMEOUT)
