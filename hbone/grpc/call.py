"""Pieces shared by both ends of a call: reading messages off a stream, framing outgoing ones, error mapping.

A call's request or response body is a sequence of Length-Prefixed-Messages (PROTOCOL-HTTP2.md) carried in DATA
frames. `MessageReader` pulls bytes from an HTTP/2 `Stream` (which credits the flow-control window as it reads)
through the sans-IO `MessageDecoder`; `frame` builds the outgoing prefix and body. Both raise `hbone.errors`
types whose ``grpc_status`` is what the call ends with; `status_from_exception` turns any of them into a `Status`.
"""

from __future__ import annotations

from typing import Protocol

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.framing import MessageDecoder, compress, message_prefix
from hbone.limits import ByteBudget, grpc_connection_budget

__all__ = ["MessageReader", "connection_budget", "frame"]

# Below this size the prefix and body are joined into one buffer (one DATA frame); above it they are queued
# separately so a large body is never copied just to put five bytes in front of it.
_JOIN_LIMIT = 64 * 1024


class _Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class MessageReader:
    """Whole messages from one direction of a stream. `read()` returns None at a clean end of stream."""

    __slots__ = ("_decoder", "_pending", "_stream")

    def __init__(
        self, stream: _Readable, max_message_size: int, encoding: str | None, budget: ByteBudget | None = None
    ) -> None:
        self._stream = stream
        self._decoder = MessageDecoder(max_message_size, encoding, budget)
        # Messages not yet returned, last first. A list, not a deque: an empty deque keeps a 64-slot block
        # (~0.7 KiB for each long-lived call, e.g. every idle xDS stream; tools/bench/xds_memprobe.py).
        self._pending: list[bytes] = []

    async def read(self) -> bytes | None:
        pending = self._pending
        while not pending:
            data = await self._stream.read()
            if not data:
                self._decoder.close()  # a partial message left over is a truncated stream
                return None
            pending = self._decoder.feed(data)
            pending.reverse()
            self._pending = pending
        msg = pending.pop()
        self._decoder.consumed(len(msg))
        return msg

    def release(self) -> None:
        """The call ended: messages not read and a partial one no longer count against the byte budget."""
        self._pending = []
        self._decoder.release()


def connection_budget(stream: object) -> ByteBudget | None:
    """The gRPC byte budget of the HTTP/2 connection carrying `stream` (made on first use), None if it has none."""
    conn = getattr(stream, "connection", None)
    if conn is None:
        return None
    budget: ByteBudget | None = getattr(conn, "grpc_budget", None)
    if budget is None:
        budget = grpc_connection_budget()
        conn.grpc_budget = budget
    return budget


def frame(body: bytes, max_size: int, encoding: str | None) -> list[bytes]:
    """Buffers to write for one message: compressed with ``encoding`` (None: identity), checked against max_size."""
    if len(body) > max_size:
        raise GrpcError(GrpcStatus.RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(body)} vs. {max_size})")
    if encoding is not None:
        body = compress(body, encoding)
        prefix = message_prefix(len(body), True)
    else:
        prefix = message_prefix(len(body), False)
    if len(body) <= _JOIN_LIMIT:
        return [prefix + body]
    return [prefix, body]
