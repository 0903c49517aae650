"""Ingress HTTP/2, routed per request: terminate h2 from the client, pick a backend per stream by `:authority`.

The client's connection (h2c prior knowledge, or TLS with ALPN h2) is served by our `H2Connection` in the server
role. Each request stream is routed through the host table and forwarded as HTTP/2 to the backend over an HBONE
tunnel; the backend connection is shared by every client of the listener (one per backend, reopened when it
dies), the way Envoy pools upstream h2 connections. Headers (minus connection-specific ones, RFC 9113 §8.2.2),
body and trailers are copied both ways, so gRPC passes through. No route: 404; upstream failure: 502; no
response headers in time: 504. Each request is one access-log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError
from hbone.grpc.transport import ByteStreamTransport, connect_over
from hbone.net.connection import H2Connection
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.net.streamtypes import HeaderList
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, fmt_addr
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.responders import StreamResponder
from hbone.wire.authority import Authority

log = logging.getLogger("hbone.ingress")

#: RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2 (`te` is allowed with `trailers` only).
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})

Lookup = Callable[[str | None], Authority]


def strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def forwardable(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    return [(k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC and (k != b"te" or v == b"trailers")]


def request_authority(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    found: dict[bytes, bytes] = {}
    for k, v in headers:
        if k in (b":authority", b"host"):
            found.setdefault(k, v)
    value = found.get(b":authority") or found.get(b"host")
    return strip_port(value.decode("latin-1")) if value else None


class H2Backends:
    """One client HTTP/2 connection per backend, each over its own HBONE tunnel; reopened when it dies."""

    def __init__(self, opener: Opener, settings: H2Settings | None = None) -> None:
        self.opener = opener
        self.settings = settings or H2Settings.client()
        self._conns: dict[Authority, H2Connection] = {}
        self._locks: dict[Authority, asyncio.Lock] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.opened = 0

    async def get(self, target: Authority, src: tuple[str, int] | None) -> H2Connection:
        conn = self._conns.get(target)
        if conn is not None and conn.is_usable:
            return conn
        async with self._locks.setdefault(target, asyncio.Lock()):
            conn = self._conns.get(target)
            if conn is not None and conn.is_usable:
                return conn
            record = AccessRecord("ingress-h2-upstream", mode="HTTP/2")
            upstream = await self.opener.open(target, src=src, record=record)
            try:
                conn = await connect_over(upstream.pipe, self.settings)
            except BaseException:  # (a request timeout cancels this too) the tunnel must not stay open
                upstream.close()
                raise
            self._conns[target] = conn
            self.opened += 1
            watcher = asyncio.ensure_future(self._watch(conn, upstream.close, TunnelGuard(record)))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
            return conn

    async def _watch(self, conn: H2Connection, close: Callable[[], None], guard: TunnelGuard) -> None:
        with guard:
            try:
                await conn.wait_closed()
            finally:  # closing the pool cancels the watch: the backend connection's record ends either way
                close()
                guard.finish(200, "closed")

    async def open_stream(
        self, target: Authority, src: tuple[str, int] | None, headers: HeaderList, end: bool
    ) -> Stream:
        """A request stream to the backend; one retry on a fresh connection if the pooled one just died."""
        for attempt in (0, 1):
            conn = await self.get(target, src)
            try:
                return await conn.open_stream(headers, end_stream=end)
            except ConnectionLost:
                if attempt:
                    raise
                self._conns.pop(target, None)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(HboneError, OSError):
                await conn.close()
        for task in list(self._watchers):
            task.cancel()


async def pump(src: Stream, dst: Stream) -> int:
    """Copy body then trailers (or END_STREAM) from one stream to the other; returns body bytes."""
    total = 0
    while data := await src.read(64 * 1024):
        await dst.send(data)
        total += len(data)
    trailers = src.trailers
    if trailers:
        dst.send_trailers(forwardable(trailers))
    else:
        dst.write_eof()
    return total


class H2Ingress:
    """Serves one client connection's request streams (`serve`), routing each by `:authority`."""

    def __init__(
        self, backends: H2Backends, route: Lookup, *, request_timeout: float = 15.0, scheme: str = "http"
    ) -> None:
        self.backends = backends
        self.route = route
        self.request_timeout = request_timeout
        self.scheme = scheme

    async def serve(self, carrier: Any, peer: tuple[str, int] | None, settings: H2Settings | None = None) -> None:
        """Run an HTTP/2 server connection over `carrier` (stream-shaped) until it closes."""
        conn = H2Connection(
            client=False, settings=settings or H2Settings.server(), handler=lambda s: self.handle(s, peer)
        )
        ByteStreamTransport(carrier, conn, {"peername": peer}).start()
        await conn.wait_closed()

    async def handle(self, stream: Stream, peer: tuple[str, int] | None) -> None:
        headers = stream.request_headers
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        record = AccessRecord("ingress-http", mode="HTTP/2", src_addr=fmt_addr(peer))
        authority = request_authority(headers)
        record.request = (
            f"{pseudo.get(b':method', b'').decode('latin-1')} {authority or '-'}"
            f"{pseudo.get(b':path', b'').decode('latin-1')}"
        )
        responder = StreamResponder(stream, gateway=True)  # 404 no route, 502 upstream, 504 timeout; reset after
        with TunnelGuard(record, responder) as guard:
            target = self.route(authority)
            responder.describe = lambda reason: f"upstream {target}: {reason}"
            await self._forward(stream, peer, target, guard)

    async def _forward(
        self, stream: Stream, peer: tuple[str, int] | None, target: Authority, guard: TunnelGuard
    ) -> None:
        record = guard.record
        out = forwardable(stream.request_headers)
        if peer is not None:
            out.append((b"x-forwarded-for", peer[0].encode()))
        out.append((b"x-forwarded-proto", self.scheme.encode()))
        ended = stream.at_eof and not stream.trailers
        sender: asyncio.Future[int] | None = None
        up: Stream | None = None
        try:
            async with asyncio.timeout(self.request_timeout):
                up = await self.backends.open_stream(target, peer, out, ended)
                record.dst_addr = str(target)
                if not ended:
                    sender = asyncio.ensure_future(_send_body(stream, up))
                response = await up.response_headers()
            status = _status(response)
            stream.send_headers(forwardable(response), end_stream=up.at_eof and not up.trailers)
            guard.answered(status)
            if not up.at_eof or up.trailers:
                record.bytes_received = await pump(up, stream)
            if sender is not None:
                record.bytes_sent = await sender
        except BaseException:
            if up is not None:
                up.reset(H2ErrorCode.CANCEL)  # no-op once it finished; the backend must not wait for the rest
            await _cancel(sender)
            raise


async def _send_body(src: Stream, up: Stream) -> int:
    try:
        return await pump(src, up)
    except HboneError:
        up.reset(H2ErrorCode.CANCEL)  # the client gave up mid-upload: the backend must not wait for the rest
        raise


async def _cancel(task: asyncio.Future[int] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, HboneError, OSError):
            await task


def _status(headers: HeaderList) -> int:
    return next((int(v) for k, v in headers if k == b":status"), 0)
