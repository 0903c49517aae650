"""One gRPC call in progress on a client channel (`ClientCall`), and the connection class its channel dials.

The call owns its stream for its whole life: it sends framed messages, reads the response headers (or a
Trailers-Only block), the messages and the trailers, and turns every failure, deadline and cancellation into one
final `Status`. It talks to its channel only through `CallChannel` (limits, default compression, opening a stream),
so `hbone.grpc.client` depends on this module and never the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Protocol

from hbone.errors import GrpcError, GrpcStatus, H2ErrorCode, HboneError
from hbone.grpc.call import MessageReader, connection_budget, frame
from hbone.grpc.codec import Codec
from hbone.grpc.metadata import Metadata, MetadataLike
from hbone.grpc.status import Status, parse_response_headers, parse_trailers, status_from_exception
from hbone.net.connection import H2Connection
from hbone.net.stream import Stream

__all__ = ["CallChannel", "ClientCall", "ClientConnection"]

_STATUS_KEY = b"grpc-status"


class ClientConnection(H2Connection):
    """A client connection whose calls can push a finished request out at once.

    The driver coalesces the frames of one loop iteration into one write. For a request that is complete (sent
    with END_STREAM) waiting for the end of the iteration only adds latency, and with many calls in flight it
    makes client and server take turns on whole batches; writing at once lets the server start on the first
    call while we still prepare the next. Measured: 1.6x unary calls/s with 16 in flight, 1.15x with 1.
    """

    def flush_now(self) -> None:
        self.flush()


class CallChannel(Protocol):
    """What a call needs from its channel."""

    compression: str | None
    max_send_message_size: int
    max_receive_message_size: int

    def open_call(
        self, path: str, timeout: float | None, metadata: MetadataLike, encoding: str | None
    ) -> Awaitable[tuple[ClientConnection, Stream]]:
        """Open the call's stream with its request headers sent (retried once on a fresh connection after GOAWAY)."""
        ...


class ClientCall:
    """One call in progress. Use as an async context manager; leaving it early cancels the call."""

    def __init__(
        self,
        channel: CallChannel,
        path: str,
        *,
        request_codec: Codec[Any],
        response_codec: Codec[Any],
        timeout: float | None,
        metadata: MetadataLike,
        compression: str | None,
    ) -> None:
        self._channel = channel
        self.path = path
        self._codec_in = response_codec
        self._codec_out = request_codec
        self._timeout = timeout
        self._metadata = metadata
        comp = compression if compression is not None else channel.compression
        self._encoding = comp.lower() if comp and comp.lower() != "identity" else None
        self._stream: Stream | None = None
        self._conn: ClientConnection | None = None
        self._reader: MessageReader | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelled = False
        #: The final status once the call ended (None while running).
        self.status: Status | None = None
        self.initial_metadata: Metadata | None = None
        self.trailing_metadata: Metadata | None = None
        #: The server's ``grpc-encoding`` for its messages (None: uncompressed), once its headers arrived.
        self.response_encoding: str | None = None
        #: The raw response header block (a Trailers-Only response's too), for debugging tools.
        self.raw_headers: list[tuple[bytes, bytes]] | None = None

    @property
    def raw_trailers(self) -> list[tuple[bytes, bytes]] | None:
        """The raw trailer block, once received (None for Trailers-Only responses and unfinished calls)."""
        return self._stream.trailers if self._stream is not None else None

    async def __aenter__(self) -> ClientCall:
        await self._start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._release()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        opening = self._channel.open_call(self.path, self._timeout, self._metadata, self._encoding)
        try:
            if self._timeout is None:
                self._conn, self._stream = await opening
            else:
                deadline = loop.time() + self._timeout
                async with asyncio.timeout_at(deadline):
                    self._conn, self._stream = await opening
                self._timer = loop.call_at(deadline, self._expire)
        except TimeoutError:
            raise self._end(Status(GrpcStatus.DEADLINE_EXCEEDED, "Deadline Exceeded (waiting for a stream)")) from None
        except GrpcError as exc:
            raise self._end(Status(exc.status, exc.message, exc.details)) from None
        except HboneError as exc:
            raise self._end(status_from_exception(exc)) from None

    # --- sending -------------------------------------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Send one request message (waits while the stream's send buffer is full)."""
        stream = self._running()
        if stream is None:
            return
        try:
            body = self._codec_out.encode(message)
            for buf in frame(body, self._channel.max_send_message_size, self._encoding):
                stream.write(buf)
            await stream.drain()
        except HboneError as exc:
            raise self._fail(exc) from None

    async def done_sending(self) -> None:
        """Half-close: no more requests (END_STREAM)."""
        stream = self._running()
        if stream is None:
            return
        try:
            stream.write_eof()
        except HboneError as exc:
            raise self._fail(exc) from None

    async def send_last(self, message: Any) -> None:
        """Send one message and half-close in the same write (what a unary or server-streaming call does)."""
        stream = self._running()
        if stream is None:
            return
        try:
            for buf in frame(self._codec_out.encode(message), self._channel.max_send_message_size, self._encoding):
                stream.write(buf)
            stream.write_eof()
            if self._conn is not None:
                self._conn.flush_now()
            await stream.drain()
        except HboneError as exc:
            raise self._fail(exc) from None

    def _running(self) -> Stream | None:
        """The stream while the call runs; None if it ended OK; raises the final status if it failed."""
        if self.status is not None:
            if self.status.ok:
                return None
            raise self.status.to_error()
        assert self._stream is not None, "call not started: use 'async with'"
        return self._stream

    # --- receiving -----------------------------------------------------------------------------------------------

    async def recv(self) -> Any:
        """The next response, or None at the end of a successful call; raises GrpcError for any other status."""
        stream = self._running()
        if stream is None:
            return None
        try:
            reader = self._reader
            if reader is None:
                reader = await self._read_headers(stream)
                if reader is None:
                    return self._result()
            data = await reader.read()
        except HboneError as exc:
            raise self._fail(exc) from None
        if data is None:
            trailers = stream.trailers
            if trailers is None:
                raise self._end(Status(GrpcStatus.INTERNAL, "server ended the stream without trailers"))
            status, self.trailing_metadata = parse_trailers(trailers)
            self._end(status)
            return self._result()
        try:
            return self._codec_in.decode(data)
        except HboneError as exc:
            raise self._fail(exc) from None

    async def _recv_one(self) -> Any:
        reply = await self.recv()
        if reply is None:
            raise self._end(Status(GrpcStatus.INTERNAL, "server sent no response message"), force=True)
        if await self.recv() is not None:
            raise self._end(Status(GrpcStatus.INTERNAL, "server sent more than one response message"), force=True)
        return reply

    async def _read_headers(self, stream: Stream) -> MessageReader | None:
        headers = self.raw_headers = await stream.response_headers()
        if any(k == _STATUS_KEY for k, _ in headers):  # Trailers-Only
            status, self.trailing_metadata = parse_trailers(headers)
            self.initial_metadata = Metadata()
            self._end(status)
            return None
        info = parse_response_headers(headers)
        self.initial_metadata = info.metadata
        self.response_encoding = info.encoding
        self._reader = MessageReader(
            stream, self._channel.max_receive_message_size, info.encoding, connection_budget(stream)
        )
        return self._reader

    def _result(self) -> None:
        assert self.status is not None
        if not self.status.ok:
            raise self.status.to_error()

    # --- ending --------------------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Abandon the call: RST_STREAM(CANCEL); later operations raise CANCELLED."""
        if self.status is None:
            self._cancelled = True
            self._end(Status(GrpcStatus.CANCELLED, "call cancelled by the client"))

    def _expire(self) -> None:
        self._timer = None
        if self.status is None:
            self._expired = True
            self._end(Status(GrpcStatus.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _fail(self, exc: BaseException) -> GrpcError:
        """The error for an operation interrupted by ``exc``; a status the server already sent wins."""
        if self.status is not None:
            return self.status.to_error()
        stream = self._stream
        if isinstance(exc, GrpcError):
            return self._end(Status(exc.status, exc.message, exc.details))
        if stream is not None and stream.error is not None and stream.trailers is not None:
            status, self.trailing_metadata = parse_trailers(stream.trailers)
            return self._end(status)
        return self._end(status_from_exception(exc))

    def _end(self, status: Status, *, force: bool = False) -> GrpcError:
        if self.status is None or force:
            self.status = status
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        return self.status.to_error()

    def _release(self) -> None:
        """Free the stream: a call that is not finished both ways is reset (CANCEL)."""
        stream = self._stream
        if self.status is None:
            self._cancelled = True
            self.status = Status(GrpcStatus.CANCELLED, "call abandoned by the client")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if stream is not None and not stream.closed:
            with contextlib.suppress(HboneError):
                stream.reset(H2ErrorCode.CANCEL)
