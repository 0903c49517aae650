"""The HBONE server: mTLS (:15008) and h2c (:15009) listeners whose streams go to the inbound handler or gRPC.

One listener serves both HBONE tunnels (CONNECT, or POST with `x-tun`) and gRPC requests (POST with
`content-type: application/grpc…`), so the control plane and CA can be reached over the same mTLS port as tunnels.
A TLS client whose SPIFFE id is not in our trust domain is dropped right after the handshake (docs/hbone-spec.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, PeerIdentityError
from hbone.identity.spiffe import SpiffeId
from hbone.net.connection import H2Connection
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.tls import MeshTls, check_client_peer, peer_identity

log = logging.getLogger("hbone.server")


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is on the other end of an HTTP/2 connection."""

    identity: SpiffeId | None
    address: tuple[str, int] | None
    local_address: tuple[str, int] | None = None
    tls: bool = True


#: What serves a stream: the inbound HBONE handler (`hbone.proxy.inbound`), a `GrpcServer`, or any callable.
StreamApp = Callable[[Stream, PeerInfo], Awaitable[None]]


def _header(stream: Stream, name: bytes) -> bytes | None:
    for k, v in stream.request_headers:
        if k == name:
            return v
    return None


class _ServerConnection(H2Connection):
    """A server connection that knows its peer, checked once right after the TLS handshake."""

    peer: PeerInfo

    def __init__(self, server: HboneServer, tls: bool, check_identity: bool) -> None:
        # A module-level handler, not the bound `self._route`: a bound method in our own field is a reference cycle
        # that kept every closed connection's memory until the cycle collector ran.
        super().__init__(client=False, settings=server.settings, handler=_route, registry=server.connections)
        self._server = server
        self._tls = tls
        self._check = check_identity

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        addr = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        ident: SpiffeId | None = None
        if self._tls and self._check:
            try:
                ident = check_client_peer(transport.get_extra_info("ssl_object"), self._server.trust_domain)
            except PeerIdentityError as e:
                log.info("dropping connection from %s: %s", addr, e)
                self._server.rejected_peers += 1
                getattr(transport, "abort", transport.close)()
        elif self._tls:
            ident = peer_identity(transport.get_extra_info("ssl_object"))
        self.peer = PeerInfo(
            ident, (addr[0], addr[1]) if addr else None, (local[0], local[1]) if local else None, self._tls
        )
        if len(self._server.connections) > self._server.max_connections:
            # A clear refusal: GOAWAY ENHANCE_YOUR_CALM right after our SETTINGS, then close.
            self.trip("max_connections", f"over {self._server.max_connections} connections")
            self._abort(ConnectionLost("too many connections"), H2ErrorCode.ENHANCE_YOUR_CALM)


async def _route(stream: Stream) -> None:
    conn = stream.connection
    assert isinstance(conn, _ServerConnection)
    await conn._server.dispatch(stream, conn.peer)


def answer_stream(stream: Stream, status: int, text: str) -> None:
    """Answer an HTTP/2 request with `status` and `text` as a text/plain body, ending the stream. A stream that
    can no longer take a response (reset, connection gone, headers already sent) is reset instead."""
    body = text.encode("utf-8", "replace") + b"\n"
    try:
        stream.send_headers(
            [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8"),
             (b"content-length", str(len(body)).encode())]
        )  # fmt: skip
        stream.write(body)
        stream.write_eof()
    except HboneError:
        with contextlib.suppress(HboneError):
            stream.reset()
    log.debug("answered stream %s with %d: %s", stream.stream_id, status, text)


class HboneServer:
    def __init__(
        self,
        tls: MeshTls | None,
        inbound: StreamApp | None,
        *,
        settings: H2Settings | None = None,
        grpc: StreamApp | None = None,
        max_connections: int = 8192,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.tls = tls
        #: Connections (all listeners of this server) beyond which new ones get GOAWAY ENHANCE_YOUR_CALM.
        self.max_connections = max_connections
        #: Seconds a TLS client has to finish its handshake (asyncio's default is 60 s).
        self.handshake_timeout = handshake_timeout
        self.inbound = inbound
        self.grpc = grpc
        self.settings = settings or H2Settings.server()
        self.connections: set[H2Connection] = set()
        self.servers: list[asyncio.Server] = []
        self.rejected_peers = 0
        self.draining = False

    @property
    def trust_domain(self) -> str:
        if self.tls is None:
            raise PeerIdentityError("no TLS identity configured")
        return self.tls.trust_domain

    async def listen(
        self,
        host: str,
        port: int,
        *,
        plaintext: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 4096,
    ) -> tuple[str, int]:
        """Start a listener: mTLS with the mesh identity (default), h2c with `plaintext` (trusted networks and
        tests only), or TLS with a caller's `ssl_context` (e.g. server-auth only, callers authenticated by JWT;
        a client certificate, if any, is reported but need not be in our trust domain). The large default `backlog`
        absorbs reconnect storms (thousands of proxies after a control-plane restart) instead of dropping SYNs."""
        check = False
        ctx: ssl.SSLContext | None = None
        if ssl_context is not None:
            ctx = ssl_context
        elif not plaintext:
            if self.tls is None:
                raise PeerIdentityError("an mTLS listener needs certificates")
            ctx, check = self.tls.server_context(), True
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _ServerConnection(self, ctx is not None, check),
            host,
            port,
            ssl=ctx,
            ssl_handshake_timeout=self.handshake_timeout if ctx is not None else None,
            reuse_address=True,
            backlog=backlog,
        )
        self.servers.append(server)
        sock: Any = server.sockets[0].getsockname()
        # The self-call guard knows the ports we really listen on (a plain callable as `inbound` has no guard).
        add_own = getattr(self.inbound, "add_own_address", None)
        if add_own is not None:
            for bound in server.sockets:
                name = bound.getsockname()
                add_own(name[0], name[1])
        return sock[0], sock[1]

    async def dispatch(self, stream: Stream, peer: PeerInfo) -> None:
        method = _header(stream, b":method")
        if method == b"CONNECT" or (method == b"POST" and _header(stream, b"x-tun") is not None):
            if self.inbound is None:
                return answer_stream(stream, 404, "this listener does not terminate HBONE tunnels")
            return await self.inbound(stream, peer)
        ctype = _header(stream, b"content-type") or b""
        if method == b"POST" and ctype.startswith(b"application/grpc") and self.grpc is not None:
            return await self.grpc(stream, peer)
        if method not in (b"CONNECT", b"POST"):
            return answer_stream(stream, 400, f"method {method!r} is neither CONNECT nor POST")
        return answer_stream(
            stream, 400, "POST without x-tun is not an HBONE tunnel, and no gRPC service is served here"
        )

    async def drain(self, deadline: float | None = None) -> None:
        """Stop accepting, send GOAWAY everywhere, let running streams finish until the deadline."""
        self.draining = True
        for s in self.servers:
            s.close()
        await asyncio.gather(*(c.drain(deadline) for c in list(self.connections)), return_exceptions=True)

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for c in list(self.connections):
            c.abort()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 5)
        self.servers.clear()
