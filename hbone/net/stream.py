"""One HTTP/2 stream as the application sees it: headers, a byte pipe each way with half-close, trailers.

A `Stream` is a thin state holder; its owner (the `H2Connection` carrying it, seen only as a `StreamOwner`) moves
bytes between it and the HTTP/2 engine. Reading credits the HTTP/2 window only for bytes the application consumed
(RFC 9113 §5.2), so a slow reader bounds the memory its peer can make us hold to one stream window. Writing queues
bytes in the stream's `Outbox`, which the connection's send scheduler drains as the peer's windows allow;
`drain()` blocks while more than `max_send_buffer` bytes are queued.

The methods under "called by the owner" are the owner's side of the contract (received headers, data, end, failure);
applications use the rest.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.outbox import Outbox
from hbone.net.streamtypes import (
    Flag,
    HeaderInput,
    HeaderList,
    StreamClosed,
    StreamConsumer,
    encode_headers,
    take_front,
)

if TYPE_CHECKING:
    from hbone.net.settings import H2Settings


class StreamOwner(Protocol):
    """What a `Stream` needs from the connection that carries it (`hbone.net.connection.H2Connection`)."""

    @property
    def settings(self) -> H2Settings: ...

    @property
    def ssl_object(self) -> _ssl.SSLObject | None: ...

    @property
    def peer_cert(self) -> bytes | None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def check_outbound_headers(self, headers: HeaderList) -> None:
        """Raise LimitExceeded if the peer's SETTINGS_MAX_HEADER_LIST_SIZE refuses `headers`."""

    def send_stream_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        """Send the response headers of `stream` now."""

    def stream_writable(self, stream: Stream) -> None:
        """The stream's outbox grew or its end was queued: send what the windows allow."""

    def credit_stream(self, stream_id: int, n: int) -> None:
        """`n` received bytes were consumed: return them to the peer's windows."""

    def reset_stream(self, stream: Stream, code: int) -> None:
        """RST_STREAM(code) and fail the stream locally."""


class Stream:
    """An HTTP/2 stream (CONNECT tunnel or gRPC call). Created by its connection, never directly."""

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        *,
        local: bool,
        request_headers: HeaderList,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._owner = owner
        self._loop = loop
        self.stream_id = stream_id
        #: True when we opened the stream (client role).
        self.local = local
        #: The request headers (received on the server, sent on the client).
        self.request_headers: HeaderList = request_headers
        #: Bytes of DATA received from the peer (payload only).
        self.bytes_in = 0
        #: RFC 9113 §8.1: once our response is complete, reset a request we no longer read (RST NO_ERROR).
        self.reset_after_end = False
        #: The send side, drained by the owner's scheduler.
        self.outbox = Outbox()
        self._response: HeaderList | None = None
        self._response_event = Flag(loop)
        self._trailers_in: HeaderList | None = None
        self._headers_sent = local  # a client stream is opened with its request headers
        # receive side
        self._recv: deque[bytes] = deque()
        self._recv_len = 0  # received and not yet credited (read, or credited by the consumer)
        self._recv_eof = False
        self._discarded = False  # received bytes were dropped by a reset: reads raise instead of EOF
        self._read_waiter: asyncio.Future[None] | None = None
        #: Why the stream broke (StreamReset, StreamRefused, ConnectionLost), or None. A plain attribute, not a
        #: property: the send scheduler and the router read it for every DATA frame. Set only by the stream itself.
        self.error: HboneError | None = None
        self._closed_event = Flag(loop)
        self._consumer: StreamConsumer | None = None

    @property
    def connection(self) -> StreamOwner:
        """The connection carrying this stream (settings, peer address, TLS session, peer certificate)."""
        return self._owner

    @property
    def bytes_out(self) -> int:
        """Bytes of DATA handed to the engine for the peer (payload only)."""
        return self.outbox.sent

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} in={self.bytes_in} out={self.bytes_out} closed={self.closed}>"

    # --- headers and trailers ------------------------------------------------------------------------------------

    async def response_headers(self) -> HeaderList:
        """Wait for the peer's final (non-1xx) response headers (client streams)."""
        if self._response is None:
            if self.error is not None:
                raise self.error
            await self._response_event.wait()
            if self._response is None:
                assert self.error is not None
                raise self.error
        return self._response

    def send_headers(self, headers: HeaderInput, *, end_stream: bool = False) -> None:
        """Send response headers (server streams). `end_stream` makes a headers-only / trailers-only response."""
        self._check_writable()
        if self._headers_sent:
            raise StreamClosed(f"stream {self.stream_id}: headers already sent")
        encoded = encode_headers(headers)
        self._owner.check_outbound_headers(encoded)  # LimitExceeded leaves the stream untouched
        self._headers_sent = True
        if end_stream:
            self.outbox.end_queued = True
        self._owner.send_stream_headers(self, encoded, end_stream)

    def send_trailers(self, trailers: HeaderInput) -> None:
        """Queue trailers after the pending data; they end our side of the stream (RFC 9113 §8.1)."""
        self._check_writable()
        if not self._headers_sent:
            raise StreamClosed(f"stream {self.stream_id}: send headers before trailers")
        self.outbox.trailers = encode_headers(trailers)
        self.outbox.end_queued = True
        self._owner.stream_writable(self)

    @property
    def headers_sent(self) -> bool:
        """Our headers went out (always true for a stream we opened)."""
        return self._headers_sent

    @property
    def trailers(self) -> HeaderList | None:
        """Trailers received from the peer, once the stream ended with them (gRPC status)."""
        return self._trailers_in

    # --- reading -------------------------------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (any amount available if n < 0); b"" once the peer ended its side (END_STREAM)."""
        if n == 0:
            return b""
        while not self._recv:
            if self._recv_eof and not self._discarded:
                return b""  # the peer's side is complete, whatever happened to ours
            if self.error is not None:
                raise self.error
            await self._wait_readable()
        if n < 0 or n >= self._recv_len:
            data = self._recv.popleft() if len(self._recv) == 1 else b"".join(self._recv)
            self._recv.clear()
        else:
            data = take_front(self._recv, n)
        self._recv_len -= len(data)
        self._owner.credit_stream(self.stream_id, len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; asyncio.IncompleteReadError if the peer ends its side first."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def _wait_readable(self) -> None:
        if self._read_waiter is not None:
            raise RuntimeError(f"stream {self.stream_id}: concurrent read() calls")
        fut = self._loop.create_future()
        self._read_waiter = fut
        try:
            await fut
        finally:
            self._read_waiter = None

    @property
    def at_eof(self) -> bool:
        """True when the peer ended its side and every received byte was read."""
        return self._recv_eof and not self._recv

    @property
    def peer_ended(self) -> bool:
        """The peer's END_STREAM arrived (bytes may still be unread)."""
        return self._recv_eof

    def attach(self, consumer: StreamConsumer) -> None:
        """Deliver received bytes, END_STREAM, close and failure to `consumer` from now on (no more `read()`).

        Bytes that arrived before are handed over first; then the end or failure, if it already happened.
        """
        self._consumer = consumer
        pending = list(self._recv)
        self._recv.clear()
        for data in pending:  # already counted in _recv_len: the consumer credits them
            consumer.stream_data(data)
        if self.error is not None:
            consumer.stream_failed(self.error)
            return
        if self._recv_eof:
            consumer.stream_eof()
        if self.closed:
            consumer.stream_closed()

    def credit(self, n: int) -> None:
        """A consumer is done with `n` received bytes: return them to the peer's windows (RFC 9113 §6.9)."""
        if n > 0 and self.error is None:
            self._recv_len -= n
            self._owner.credit_stream(self.stream_id, n)

    def drained(self, limit: int | None = None) -> asyncio.Future[None] | None:
        """None while at most `limit` bytes (default `max_send_buffer`) are queued; else a future done once the
        queue has drained to half of it, or the stream broke (the callback form of `drain()`)."""
        if limit is None:
            limit = self._owner.settings.max_send_buffer
        if self.outbox.size <= limit and self.error is None:
            return None
        fut = self._loop.create_future()
        if self.error is not None:
            fut.set_result(None)
        else:
            self.outbox.wait(fut, limit // 2)
        return fut

    # --- writing -------------------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for sending; pair with `drain()` to bound memory."""
        outbox = self.outbox
        if self.error is not None or outbox.end_queued:  # _check_writable(), inline: this runs for every TCP read
            self._check_writable()
        if not self._headers_sent:
            raise StreamClosed(f"stream {self.stream_id}: send headers before data")
        if not data:
            return
        if isinstance(data, bytes):  # immutable: queued as-is, no copy
            outbox.put(data)
            self._owner.stream_writable(self)
            return
        # A buffer the caller may reuse once we return (a protocol's read buffer): the owner frames what the windows
        # allow straight from it, and only what stays queued is copied. One copy of each byte on its way to the
        # engine instead of two, and no allocation of a read's size per read (RESULTS-hbone.md round 6).
        view = data if type(data) is memoryview else memoryview(data)
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            view = memoryview(view.tobytes())  # an unusual layout: copy it flat
        outbox.put(view)
        self._owner.stream_writable(self)
        if outbox.size:
            outbox.own(view)

    async def drain(self) -> None:
        """Wait while more than `max_send_buffer` bytes are queued; raises the stream's error if it broke."""
        limit = self._owner.settings.max_send_buffer
        outbox = self.outbox
        while True:
            if self.error is not None:
                raise self.error
            if outbox.size <= limit:
                return
            fut = self._loop.create_future()
            outbox.wait(fut, limit // 2)
            try:
                await fut
            finally:
                if fut in outbox.waiters:
                    outbox.waiters.remove(fut)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """write() + drain()."""
        self.write(data)
        await self.drain()

    def write_eof(self) -> None:
        """Half-close: END_STREAM after the queued data (RFC 9113 §8.1). Idempotent."""
        if self.outbox.end_queued or self.error is not None:
            return
        if not self._headers_sent:
            raise StreamClosed(f"stream {self.stream_id}: send headers before ending the stream")
        self.outbox.end_queued = True
        self._owner.stream_writable(self)

    @property
    def buffered(self) -> int:
        """Bytes queued for sending and not yet handed to the engine."""
        return self.outbox.size

    def _check_writable(self) -> None:
        if self.error is not None:
            raise self.error
        if self.outbox.end_queued:
            raise StreamClosed(f"stream {self.stream_id}: our side is already closed")

    # --- ending --------------------------------------------------------------------------------------------------

    def reset(self, code: int = H2ErrorCode.CANCEL) -> None:
        """Abort the stream with RST_STREAM(code) (RFC 9113 §6.4). No-op if it is already finished."""
        if self.error is not None or self.closed:
            return
        self._owner.reset_stream(self, int(code))

    @property
    def closed(self) -> bool:
        """Both directions finished (END_STREAM each way) or the stream broke."""
        return self._closed_event.is_set()

    async def wait_closed(self) -> None:
        """Wait until both directions are finished or the stream broke (does not raise)."""
        await self._closed_event.wait()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # Leaving the block with either side still open aborts the stream (CANCEL), releasing its slot.
        if not self.closed:
            self.reset(H2ErrorCode.CANCEL)

    # --- called by the owner ---------------------------------------------------------------------------------

    def on_response(self, headers: HeaderList) -> None:
        self._response = headers
        self._response_event.set()

    def on_trailers(self, headers: HeaderList) -> None:
        self._trailers_in = headers

    def on_data(self, data: bytes) -> None:
        self._recv_len += len(data)
        self.bytes_in += len(data)
        if self._consumer is not None:
            self._consumer.stream_data(data)
            return
        self._recv.append(data)
        self._wake_reader()

    def on_end(self) -> None:
        """The peer's END_STREAM (after its trailers, if any)."""
        self._recv_eof = True
        if self._consumer is not None:
            self._consumer.stream_eof()
        self._wake_reader()
        if self._response is None and self.local:
            self._response_event.set()  # ended without response headers: response_headers() raises
            if self.error is None:
                self.error = StreamReset(H2ErrorCode.PROTOCOL_ERROR, "stream ended without response headers")

    def fail(self, exc: HboneError, *, keep_received: bool = False) -> int:
        """Break the stream; returns the unread byte count the owner must still credit.

        `keep_received`: the connection went away after the peer had ended its side, so what it sent is complete
        and stays readable (reads then end with b"").
        """
        if self.error is None:
            self.error = exc
        if keep_received and self._recv_eof:
            unread = 0
        else:
            self._discarded = True
            unread = self._recv_len
            self._recv.clear()
            self._recv_len = 0
        self.outbox.discard()
        self._wake_reader()
        self.outbox.wake()
        self._response_event.set()
        self._closed_event.set()
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None  # the last callback: drop the stream <-> consumer reference cycle
            consumer.stream_failed(exc)
        return unread

    def finish(self) -> None:
        """Both directions ended."""
        self._closed_event.set()
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None  # the last callback: drop the stream <-> consumer reference cycle
            consumer.stream_closed()

    def _wake_reader(self) -> None:
        fut = self._read_waiter
        if fut is not None and not fut.done():
            fut.set_result(None)
