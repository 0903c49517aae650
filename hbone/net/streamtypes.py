"""The vocabulary around an HTTP/2 stream: header types and their encoding, a stream's own errors, the
callback protocol a relay uses to take a stream's bytes without `read()`, and slicing its receive queue.

Kept apart from `hbone.net.stream` so the engine side (events, lifecycle, pool) can name them without the `Stream`
class itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from hbone.errors import H2ErrorCode, HboneError, StreamReset, TunnelError

__all__ = [
    "Flag",
    "Header",
    "HeaderInput",
    "HeaderList",
    "StreamClosed",
    "StreamConsumer",
    "StreamRefused",
    "encode_headers",
    "header_list_size",
    "take_front",
]

Header = tuple[bytes, bytes]
HeaderList = list[Header]
HeaderInput = list[tuple[bytes | str, bytes | str]] | list[tuple[bytes, bytes]] | list[tuple[str, str]]


class StreamRefused(StreamReset):
    """The peer did not process the stream (REFUSED_STREAM, or above a GOAWAY's last_stream_id, RFC 9113 §8.7).

    Safe to retry on another connection.
    """

    retryable = True

    def __init__(self, message: str = "") -> None:
        super().__init__(H2ErrorCode.REFUSED_STREAM, message or "stream refused by peer; safe to retry")


class StreamClosed(TunnelError):
    """An operation on a stream whose side is already closed (write after write_eof, headers twice)."""


class StreamConsumer(Protocol):
    """Takes a stream's received bytes by callback instead of `read()` (the protocol splice, `hbone.net.pipe`).

    Called from inside the connection's event dispatch. The consumer credits what it consumed with
    `Stream.credit()`; uncredited bytes keep the peer's window closed, exactly like unread bytes.
    """

    def stream_data(self, data: bytes) -> None: ...

    def stream_eof(self) -> None: ...

    def stream_closed(self) -> None: ...

    def stream_failed(self, exc: HboneError) -> None: ...


def encode_headers(headers: HeaderInput) -> HeaderList:
    """Headers as bytes pairs; str is encoded as UTF-8 (callers pass lowercase names, RFC 9113 §8.2.1)."""
    out: HeaderList = []
    for name, value in headers:
        out.append(
            (
                name.encode() if isinstance(name, str) else name,
                value.encode() if isinstance(value, str) else value,
            )
        )
    return out


def header_list_size(headers: HeaderList) -> int:
    """RFC 9113 §6.5.2: name + value + 32 octets per field."""
    return sum([len(n) + len(v) for n, v in headers]) + 32 * len(headers)  # a list: no generator frame per field


def take_front(chunks: deque[bytes], n: int) -> bytes:
    """Remove and return the first `n` bytes of `chunks` (which holds at least `n`), splitting one chunk at most."""
    parts: list[bytes] = []
    need = n
    while need:
        head = chunks[0]
        if len(head) <= need:
            parts.append(chunks.popleft())
            need -= len(head)
        else:
            parts.append(head[:need])
            chunks[0] = head[need:]
            need = 0
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Flag:
    """`asyncio.Event` on a loop given up front. A stream has two (response, closed): `Event()` builds a deque and
    `Event.wait()` looks the running loop up, a getpid system call each time (asyncio's fork check)."""

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if self._waiters is not None and fut in self._waiters:  # cancelled before set(): forget it
                self._waiters.remove(fut)
