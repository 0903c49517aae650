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
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hbone.errors import GrpcStatus
from hbone.grpc.codec import Codec
from hbone.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE
from hbone.grpc.health import HealthServicer
from hbone.grpc.metadata import RequestRejected, validate_request_headers
from hbone.grpc.reflection import ReflectionServicer
from hbone.grpc.servercall import Kind, Method, ServerCall
from hbone.grpc.status import Status, rejection_headers, trailers_only
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.server import HboneServer, PeerInfo

__all__ = ["GrpcServer", "ServerCall"]

log = logging.getLogger("hbone.grpc.server")

MiB = 1024 * 1024


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
        self._methods: dict[str, Method] = {}
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
        self._methods[path] = Method(kind, handler, req, resp)

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

    def keep(self, task: asyncio.Task[None]) -> None:
        """A call's stream watcher lives until it ends (`CallOwner`)."""
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

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
