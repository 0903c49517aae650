"""One incoming gRPC call as its handler sees it (`ServerCall`), and what a call needs from its server.

`ServerCall` drives one request stream: reads and decodes messages, sends response headers lazily with the first
message, maps a handler's outcome to the status in the trailers, honours ``grpc-timeout``, and is cancelled when
the client resets the stream. The server (`hbone.grpc.server.GrpcServer`) is reached only through `CallOwner`;
services register through `MethodRegistry`, so the built-in health and reflection services need not import the
server that registers them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hbone.errors import GrpcError, GrpcStatus, HboneError
from hbone.grpc.call import MessageReader, connection_budget, frame
from hbone.grpc.codec import Codec
from hbone.grpc.metadata import Metadata, MetadataLike, RequestInfo, response_headers
from hbone.grpc.status import Status, status_from_exception, trailers, trailers_only
from hbone.net.stream import Stream
from hbone.server import PeerInfo

__all__ = ["CallOwner", "Kind", "Method", "MethodRegistry", "ServerCall"]

log = logging.getLogger("hbone.grpc.server")

Kind = Literal["unary", "server_stream", "client_stream", "bidi"]
# A handler that is still running after this long gets a watcher that cancels it when the client resets the
# stream. Short calls never pay for the watcher task (streaming handlers notice a reset in recv/send anyway).
_WATCH_AFTER = 0.02
_OK = Status(GrpcStatus.OK)
_OK_TRAILERS = [(b"grpc-status", b"0")]


@functools.cache
def _plain_response_headers(encoding: str | None) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in response_headers(encoding)]


class CallOwner(Protocol):
    """What a call needs from the server it runs on."""

    @property
    def max_receive_message_size(self) -> int: ...
    @property
    def max_send_message_size(self) -> int: ...
    @property
    def compression(self) -> str | None: ...
    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a reference to a helper task of a call until the task ends."""


@dataclass(frozen=True, slots=True)
class Method:
    kind: Kind
    handler: Callable[..., Any]
    request_codec: Codec[Any]
    response_codec: Codec[Any]


class ServerCall:
    """One incoming call, as its handler sees it."""

    __slots__ = (
        "_cancel_reason",
        "_codec_in",
        "_codec_out",
        "_encoding",
        "_headers_sent",
        "_initial_md",
        "_reader",
        "_server",
        "_stream",
        "_task",
        "_trailing_md",
        "deadline",
        "info",
        "metadata",
        "path",
        "peer",
    )

    def __init__(self, server: CallOwner, stream: Stream, peer: PeerInfo, info: RequestInfo, method: Method) -> None:
        self._server = server
        self._stream = stream
        self._codec_in = method.request_codec
        self._codec_out = method.response_codec
        #: The caller: ``peer.identity`` is its verified SPIFFE id on mTLS listeners, else None.
        self.peer = peer
        #: The parsed request headers (authority, user agent, encodings, timeout).
        self.info = info
        self.metadata: Metadata = info.metadata
        self.path = info.path
        #: Absolute deadline on the event loop's clock (``loop.time()``), from ``grpc-timeout``; None: no deadline.
        self.deadline: float | None = None
        self._reader = MessageReader(stream, server.max_receive_message_size, info.encoding, connection_budget(stream))
        comp = server.compression
        self._encoding = comp if comp is not None and comp in info.accept_encoding else None
        self._headers_sent = False
        self._initial_md: MetadataLike = ()
        self._trailing_md: MetadataLike = ()
        self._task: asyncio.Task[Any] | None = None
        self._cancel_reason: str | None = None

    # --- the handler's API ---------------------------------------------------------------------------------------

    async def recv(self) -> Any:
        """The next request message, or None once the client half-closed."""
        data = await self._reader.read()
        return None if data is None else self._codec_in.decode(data)

    async def send(self, message: Any) -> None:
        """Send one response message (response headers go out first, with the initial metadata)."""
        stream = self._stream
        if not self._headers_sent:
            self._send_headers()
        for buf in frame(self._codec_out.encode(message), self._server.max_send_message_size, self._encoding):
            stream.write(buf)
        await stream.drain()

    def set_initial_metadata(self, metadata: MetadataLike) -> None:
        """Metadata for the response headers; only before the first `send()`."""
        if self._headers_sent:
            raise GrpcError(GrpcStatus.INTERNAL, "initial metadata set after response headers were sent")
        self._initial_md = Metadata.of(metadata)

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        """Metadata sent with the status in the trailers."""
        self._trailing_md = Metadata.of(metadata)

    @property
    def cancelled(self) -> bool:
        """True when the client reset the stream or the connection broke."""
        return self._stream.error is not None

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    # --- driving the call ----------------------------------------------------------------------------------------

    def _send_headers(self) -> None:
        self._headers_sent = True
        if self._initial_md:
            self._stream.send_headers(response_headers(self._encoding, self._initial_md))
        else:  # the common case: the same few headers every time, encoded once
            self._stream.send_headers(_plain_response_headers(self._encoding))

    async def _recv_one(self) -> Any:
        request = await self.recv()
        if request is None:
            raise GrpcError(GrpcStatus.INTERNAL, "expected one request message, got none")
        if await self._reader.read() is not None:
            raise GrpcError(GrpcStatus.INTERNAL, "expected one request message, got more")
        return request

    async def _invoke(self, method: Method) -> None:
        kind = method.kind
        if kind == "unary":
            await self.send(await method.handler(await self._recv_one(), self))
        elif kind == "server_stream":
            replies = method.handler(await self._recv_one(), self)
            try:
                async for reply in replies:
                    await self.send(reply)
            finally:
                # Close the handler's generator now (its finally blocks run here), not whenever GC finds it.
                aclose = getattr(replies, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif kind == "client_stream":
            await self.send(await method.handler(self))
        else:
            await method.handler(self)

    async def _run(self, method: Method) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        watch = loop.call_later(_WATCH_AFTER, self._start_watch)
        try:
            status = await self._guarded(method, loop)
        except asyncio.CancelledError:
            if self._cancel_reason is None:
                raise  # the connection is being torn down: nobody to answer
            task.uncancel()
            if self._cancel_reason == "peer":
                return
            status = Status(GrpcStatus.UNAVAILABLE, "server is shutting down")
        finally:
            watch.cancel()
            self._task = None
        if status is not None:
            self._finish(status)

    async def _guarded(self, method: Method, loop: asyncio.AbstractEventLoop) -> Status | None:
        """Run the handler; return the status to send, or None when the stream is already gone."""
        timer: asyncio.Timeout | None = None
        try:
            if self.info.timeout is None:
                await self._invoke(method)
            else:
                self.deadline = loop.time() + self.info.timeout
                timer = asyncio.timeout_at(self.deadline)
                async with timer:
                    await self._invoke(method)
            return _OK
        except GrpcError as exc:
            return Status(exc.status, exc.message, exc.details)
        except TimeoutError:
            if timer is not None and timer.expired():
                return Status(GrpcStatus.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return self._internal()
        except HboneError as exc:
            if self._stream.error is not None:
                return None  # reset by the client or connection lost: there is nobody to tell
            return status_from_exception(exc)  # malformed request framing, codec errors, limits: the message is ours
        except Exception:
            if self._stream.error is not None:
                return None
            return self._internal()

    def _internal(self) -> Status:
        log.exception("handler for %s failed", self.path)
        return Status(GrpcStatus.INTERNAL, "internal error")

    def _finish(self, status: Status) -> None:
        self._reader.release()  # unread request bytes no longer count against the connection's budget
        stream = self._stream
        if stream.error is not None:
            return
        try:
            if self._headers_sent:
                if status is _OK and not self._trailing_md:
                    stream.send_trailers(_OK_TRAILERS)
                else:
                    stream.send_trailers(trailers(status, self._trailing_md))
            else:
                stream.send_headers(trailers_only(status, self._trailing_md), end_stream=True)
        except HboneError as exc:
            log.debug("could not send status of %s: %s", self.path, exc)

    def _cancel(self, reason: str) -> None:
        task = self._task
        if task is not None and self._cancel_reason is None and not task.done():
            self._cancel_reason = reason
            task.cancel()

    def _start_watch(self) -> None:
        if self._task is not None:
            self._server.keep(asyncio.get_running_loop().create_task(self._watch()))

    async def _watch(self) -> None:
        await self._stream.wait_closed()
        if self._stream.error is not None:
            self._cancel("peer")


class MethodRegistry(Protocol):
    """Where a service registers its methods (`GrpcServer`)."""

    def add_unary(
        self,
        path: str,
        handler: Callable[[Any, ServerCall], Awaitable[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None: ...
    def add_server_stream(
        self,
        path: str,
        handler: Callable[[Any, ServerCall], AsyncIterator[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None: ...
    def add_client_stream(
        self,
        path: str,
        handler: Callable[[ServerCall], Awaitable[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None: ...
    def add_bidi(
        self,
        path: str,
        handler: Callable[[ServerCall], Awaitable[None]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None: ...
    @property
    def methods(self) -> tuple[str, ...]: ...
