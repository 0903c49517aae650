"""The gRPC server: a router of ``/package.Service/Method`` paths to handlers, on the hbone HTTP/2 stack.

`GrpcServer` is a `hbone.server.StreamApp`: `HboneServer(tls, inbound, grpc=GrpcServer())` serves HBONE tunnels
and gRPC on one listener, and every handler sees the caller's verified SPIFFE id as ``call.peer.identity``.
`GrpcServer.listen()` starts such a listener for a server that only speaks gRPC.

Per call (grpc/doc/PROTOCOL-HTTP2.md): request headers are validated in one place
(`metadata.validate_request_headers`: 405/415/UNIMPLEMENTED/INTERNAL trailers-only answers); an unknown path is
UNIMPLEMENTED; ``grpc-timeout`` becomes a deadline that ends the call with DEADLINE_EXCEEDED; a RST_STREAM from the
client cancels the handler; a `GrpcError` raised by a handler ends the call with its status and any other
exception with INTERNAL "internal error" (logged here, never sent). Response headers go out lazily with the first
message, so a call that fails before sending anything gets a Trailers-Only response.

`grpc.health.v1.Health` is registered on every GrpcServer (``health=False`` opts out): SERVING while the server
accepts calls, NOT_SERVING once `shutdown()` starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from hbone.errors import GrpcError, GrpcStatus, HboneError
from hbone.grpc.call import MessageReader, connection_budget, frame, status_of
from hbone.grpc.codec import Codec
from hbone.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE
from hbone.grpc.health import HealthServicer
from hbone.grpc.metadata import (
    Metadata,
    MetadataLike,
    RequestInfo,
    RequestRejected,
    response_headers,
    validate_request_headers,
)
from hbone.grpc.reflection import ReflectionServicer
from hbone.grpc.status import Status, rejection_headers, trailers, trailers_only
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.proxy.inbound import PeerInfo

__all__ = ["GrpcServer", "ServerCall"]

log = logging.getLogger("hbone.grpc.server")

MiB = 1024 * 1024
Kind = Literal["unary", "server_stream", "client_stream", "bidi"]
# A handler that is still running after this long gets a watcher that cancels it when the client resets the
# stream. Short calls never pay for the watcher task (streaming handlers notice a reset in recv/send anyway).
_WATCH_AFTER = 0.02
_OK = Status(GrpcStatus.OK)
_OK_TRAILERS = [(b"grpc-status", b"0")]


@functools.cache
def _plain_response_headers(encoding: str | None) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in response_headers(encoding)]


@dataclass(frozen=True, slots=True)
class _Method:
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

    def __init__(self, server: GrpcServer, stream: Stream, peer: PeerInfo, info: RequestInfo, method: _Method) -> None:
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

    async def _invoke(self, method: _Method) -> None:
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

    async def _run(self, method: _Method) -> None:
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

    async def _guarded(self, method: _Method, loop: asyncio.AbstractEventLoop) -> Status | None:
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
            return status_of(exc)  # malformed request framing, codec errors, limits: the message is ours
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
            watcher = asyncio.get_running_loop().create_task(self._watch())
            self._server._watchers.add(watcher)
            watcher.add_done_callback(self._server._watchers.discard)

    async def _watch(self) -> None:
        await self._stream.wait_closed()
        if self._stream.error is not None:
            self._cancel("peer")


class GrpcServer:
    """Routes gRPC calls to handlers. Use as a `StreamApp`, or `listen()` for a gRPC-only listener."""

    def __init__(
        self,
        *,
        max_receive_message_size: int = 4 * MiB,
        max_send_message_size: int = 4 * MiB,
        compression: str | None = None,
        health: bool = True,
        reflection: bool = True,
    ) -> None:
        self.max_receive_message_size = max_receive_message_size or DEFAULT_MAX_MESSAGE_SIZE
        self.max_send_message_size = max_send_message_size
        #: Response coding used when the client accepts it ("gzip"); None sends uncompressed.
        self.compression = compression.lower() if compression and compression.lower() != "identity" else None
        self._methods: dict[str, _Method] = {}
        self._calls: set[ServerCall] = set()
        self._idle: asyncio.Event | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._listeners: list[Any] = []
        self.draining = False
        #: grpc.health.v1.Health; `set_status(service, SERVING | NOT_SERVING)`.
        self.health = HealthServicer()
        if health:
            self.health.register(self)
        if reflection:  # grpc.reflection.v1 and v1alpha: grpcurl / `hbone grpc call` find the message types
            ReflectionServicer(self).register()

    # --- registration --------------------------------------------------------------------------------------------

    def _add(self, kind: Kind, path: str, handler: Callable[..., Any], req: Codec[Any], resp: Codec[Any]) -> None:
        parts = path.split("/")
        if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
            raise ValueError(f"method path {path!r} is not of the form /package.Service/Method")
        self._methods[path] = _Method(kind, handler, req, resp)

    def add_unary(
        self,
        path: str,
        handler: Callable[[Any, ServerCall], Awaitable[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None:
        """``handler(request, call) -> response``."""
        self._add("unary", path, handler, request_codec, response_codec)

    def add_server_stream(
        self,
        path: str,
        handler: Callable[[Any, ServerCall], AsyncIterator[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None:
        """``handler(request, call)`` is an async iterator of responses."""
        self._add("server_stream", path, handler, request_codec, response_codec)

    def add_client_stream(
        self,
        path: str,
        handler: Callable[[ServerCall], Awaitable[Any]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None:
        """``handler(call) -> response``; the handler reads requests with ``call.recv()``."""
        self._add("client_stream", path, handler, request_codec, response_codec)

    def add_bidi(
        self,
        path: str,
        handler: Callable[[ServerCall], Awaitable[None]],
        request_codec: Codec[Any],
        response_codec: Codec[Any],
    ) -> None:
        """``handler(call)``; it uses ``call.recv()`` and ``call.send()`` freely."""
        self._add("bidi", path, handler, request_codec, response_codec)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._methods)

    # --- serving -------------------------------------------------------------------------------------------------

    async def __call__(self, stream: Stream, peer: PeerInfo) -> None:
        """Serve one request stream (the `StreamApp` interface of `hbone.server.HboneServer`)."""
        try:
            info = validate_request_headers(stream.request_headers)
        except RequestRejected as exc:
            stream.send_headers(rejection_headers(exc), end_stream=True)
            return
        method = self._methods.get(info.path)
        if method is None:
            status = Status(GrpcStatus.UNIMPLEMENTED, f"unknown method {info.path}")
            stream.send_headers(trailers_only(status), end_stream=True)
            return
        if self.draining:
            stream.send_headers(
                trailers_only(Status(GrpcStatus.UNAVAILABLE, "server is shutting down")), end_stream=True
            )
            return
        call = ServerCall(self, stream, peer, info, method)
        self._calls.add(call)
        try:
            await call._run(method)
        finally:
            self._calls.discard(call)
            if self._idle is not None and not self._calls:
                self._idle.set()

    async def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: Any = None,
        ssl_context: ssl.SSLContext | None = None,
        settings: H2Settings | None = None,
    ) -> tuple[str, int]:
        """Listen for gRPC only: mTLS with a `MeshTls`, TLS with ``ssl_context``, else h2c. Returns the address."""
        from hbone.server import HboneServer  # the server module imports proxy code; keep it off our import path

        server = HboneServer(tls, None, settings=settings, grpc=self)
        self._listeners.append(server)
        return await server.listen(host, port, plaintext=tls is None and ssl_context is None, ssl_context=ssl_context)

    async def shutdown(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING, GOAWAY on our listeners, running calls get ``grace`` seconds, then they are
        cancelled (the client sees UNAVAILABLE) and the listeners close."""
        self.draining = True
        self.health.enter_graceful_shutdown()
        # The connections' own drain deadline is a little later than ours, so our cancelled calls still get to
        # send their UNAVAILABLE status before the connections reset what is left.
        drains = [asyncio.ensure_future(s.drain(grace + 1.0)) for s in self._listeners]
        if self._calls:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        for call in list(self._calls):
            call._cancel("shutdown")
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)
        for s in self._listeners:
            await s.close()
        self._listeners.clear()
        for w in list(self._watchers):
            w.cancel()
