"""In-memory stand-ins shared by the driver tests and fuzzers: a recording asyncio transport, and `feed()`, which
pushes bytes into an `H2Connection` through its `asyncio.BufferedProtocol` path exactly as the event loop does."""

from __future__ import annotations

import asyncio
from typing import Any

from hbone.net.connection import H2Connection

__all__ = ["FakeTransport", "feed"]


class FakeTransport(asyncio.Transport):
    """Records what is written (`out`; only counted in `written` when `keep` is False, for long fuzz runs).

    `buffered` is what get_write_buffer_size() reports (a peer that does not read); `reading` follows
    pause_reading()/resume_reading(); `peername` is what get_extra_info("peername") returns.
    """

    def __init__(self, *, peername: Any = None, keep: bool = True) -> None:
        super().__init__()
        self.out = bytearray()
        self.written = 0
        self.keep = keep
        self.peername = peername
        self.eof = self.closed = self.aborted = False
        self.reading = True
        self.buffered = 0

    def write(self, data: Any) -> None:
        self.written += len(data)
        if self.keep:
            self.out += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" and self.peername is not None else default


def feed(proto: H2Connection, data: bytes) -> None:
    """Deliver `data` in the reads the protocol asks for (`get_buffer` may hand out less than all of it)."""
    view = memoryview(data)
    while view and not proto.closed:  # bytes after the close would be ignored anyway
        buf = proto.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
