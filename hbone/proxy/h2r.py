"""H2R reverse tunnels: a node behind NAT serves HBONE through a gateway it dialed.

The node opens mTLS to the gateway and keeps that connection (reconnecting with exponential backoff). The roles
then flip at the HTTP/2 layer: the **gateway is the HTTP/2 client** on the accepted connection and opens CONNECT
streams toward the node; the node is the HTTP/2 server and handles them with an ordinary `InboundHandler`. The
gateway registers a connection under the node's verified SPIFFE id and under the names its configuration grants to
that id (`names: {bob.example: spiffe://td/ns/ns/sa/bob}`), so a name can only be served by the identity it
belongs to. A newer connection for the same identity replaces the older one.

Traffic reaches nodes through `H2ROpener` (in front of any front end's dialer: SNI gateway, SOCKS5, CONNECT proxy,
ingress) or through `H2RInbound` (mesh clients CONNECT `name:port` to the gateway's HBONE listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from hbone.client import Endpoint
from hbone.errors import ConfigError, ConnectRefused, HboneError, PeerIdentityError, UpstreamUnreachable
from hbone.identity.spiffe import SpiffeId
from hbone.net.connection import H2Connection
from hbone.net.relay import relay
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, Upstream
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.listener import TLS_HANDSHAKE_TIMEOUT
from hbone.server import PeerInfo
from hbone.tls import MeshTls, check_client_peer, check_server_peer
from hbone.wire.authority import Authority
from hbone.wire.tracecontext import TraceParent
from hbone.wire.tunnel_request import connect_request, parse_tunnel_request, parse_tunnel_response, tunnel_response

log = logging.getLogger("hbone.h2r")

H2R_PORT = 15441  # the Go project's H2R gate port


class _GatewaySide(H2Connection):
    """An accepted node connection on which the gateway is the HTTP/2 client."""

    def __init__(self, gateway: H2RGateway) -> None:
        super().__init__(client=True, settings=gateway.settings)
        self._gateway = gateway
        self.identity: SpiffeId | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        try:
            self.identity = check_client_peer(transport.get_extra_info("ssl_object"), self._gateway.tls.trust_domain)
        except PeerIdentityError as e:
            log.info("H2R: refusing node %s: %s", transport.get_extra_info("peername"), e)
            getattr(transport, "abort", transport.close)()
            return
        self._gateway._register(self, self.identity)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._gateway._unregister(self)


class H2RGateway:
    """Accepts node registrations; opens tunnels toward registered nodes."""

    def __init__(
        self, tls: MeshTls, *, names: Mapping[str, str] | None = None, settings: H2Settings | None = None
    ) -> None:
        self.tls = tls
        self.names = {k.lower(): v for k, v in (names or {}).items()}
        self.settings = settings or H2Settings.client()
        self.nodes: dict[str, _GatewaySide] = {}
        self.registrations = 0
        self._changed = asyncio.Event()  # set and replaced on every (un)registration
        self._servers: list[asyncio.Server] = []
        self._conns: set[_GatewaySide] = set()

    async def listen(self, host: str = "0.0.0.0", port: int = H2R_PORT) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _GatewaySide(self),
            host,
            port,
            ssl=self.tls.server_context(),
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
            reuse_address=True,
        )
        self._servers.append(server)
        sock: Any = server.sockets[0].getsockname()
        return sock[0], sock[1]

    def keys_for(self, identity: SpiffeId) -> set[str]:
        return {str(identity)} | {name for name, owner in self.names.items() if owner == str(identity)}

    def _register(self, conn: _GatewaySide, identity: SpiffeId) -> None:
        self._conns.add(conn)
        self.registrations += 1
        for key in self.keys_for(identity):
            old = self.nodes.get(key)
            self.nodes[key] = conn
            if old is not None and old is not conn:
                old.abort()
        log.info("H2R: node %s registered as %s", identity, sorted(self.keys_for(identity)))
        self._notify()

    def _unregister(self, conn: _GatewaySide) -> None:
        self._conns.discard(conn)
        for key in [k for k, c in self.nodes.items() if c is conn]:
            del self.nodes[key]
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_registered(self, key: str, *, min_registrations: int = 0) -> None:
        """Wait until `key` (SPIFFE id or name) has a live node connection (and `min_registrations` happened)."""
        while not (key.lower() in self.nodes and self.registrations >= min_registrations):
            await self._changed.wait()

    def lookup(self, key: str) -> _GatewaySide | None:
        conn = self.nodes.get(key.lower())
        return conn if conn is not None and conn.is_usable else None

    async def open(
        self, key: str, target: Authority, *, forwarded_for: str | None = None
    ) -> tuple[Stream, SpiffeId | None]:
        """A CONNECT stream toward the node registered as `key`, for `target` (the node resolves it)."""
        conn = self.lookup(key)
        if conn is None:
            raise UpstreamUnreachable(f"no H2R node is connected for {key}")
        headers = connect_request(target, forwarded_for=forwarded_for, traceparent=TraceParent.generate())
        stream = await conn.open_stream(headers)
        try:
            resp = parse_tunnel_response(await stream.response_headers())
        except BaseException:
            stream.reset()
            raise
        if not resp.ok:
            stream.reset()
            raise ConnectRefused(resp.status, f"H2R node {key} refused {target}")
        return stream, conn.identity

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for c in list(self._conns):
            c.abort()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 5)
        self._servers.clear()


class H2ROpener:
    """An `Opener` that sends hostnames registered by H2R nodes through them, and the rest to `fallback`."""

    def __init__(self, gateway: H2RGateway, fallback: Opener | None = None) -> None:
        self.gateway = gateway
        self.fallback = fallback

    async def open(
        self, target: Authority, *, src: tuple[str, int] | None = None, record: AccessRecord | None = None
    ) -> Upstream:
        if self.gateway.lookup(target.host) is not None:
            stream, ident = await self.gateway.open(target.host, target, forwarded_for=_fmt(src))
            if record is not None:
                record.dst_addr, record.dst_identity, record.policy = str(target), str(ident), "h2r"
            return Upstream(stream, None, ident)
        if self.fallback is None:
            raise UpstreamUnreachable(f"no H2R node is connected for {target.host}")
        return await self.fallback.open(target, src=src, record=record)


class H2RInbound(InboundHandler):
    """The gateway's HBONE listener: CONNECT `name:port` for a registered name goes through the node; any other
    target is refused with 503 (the gateway relays only to nodes, never to what it can reach itself)."""

    def __init__(self, gateway: H2RGateway, config: InboundConfig | None = None) -> None:
        super().__init__(config or InboundConfig())
        self.gateway = gateway

    async def handle_stream(self, stream: Stream, peer: PeerInfo, guard: TunnelGuard) -> None:
        record = guard.record
        record.direction = "h2r-gateway"
        req = parse_tunnel_request(stream.request_headers)
        record.dst_addr = str(req.target)
        if self.gateway.lookup(req.target.host) is None:  # never a plain inbound: no open relay
            raise UpstreamUnreachable(f"{req.target.host} is not a registered H2R node name or identity")
        inner, ident = await self.gateway.open(req.target.host, req.target, forwarded_for=record.src_addr)
        record.dst_identity = str(ident)
        stream.send_headers(tunnel_response(200))
        guard.answered(200)
        result = await relay(stream, inner, idle_timeout=self.config.idle_timeout)
        guard.relayed(result)


class H2RNode:
    """The node side: keep one mTLS connection to the gateway and serve the streams it opens."""

    def __init__(
        self,
        tls: MeshTls,
        gateway: Endpoint,
        inbound: InboundHandler,
        *,
        settings: H2Settings | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not gateway.identities:  # an empty list would accept any certificate the mesh CA signed
            raise ConfigError("H2R node: the gateway's SPIFFE id is required (--gateway-identity, gateway_identities)")
        self.tls = tls
        self.gateway = gateway
        self.inbound = inbound
        self.settings = settings or H2Settings.server()
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.connect_timeout = connect_timeout
        self.connects = 0
        self.last_error: BaseException | None = None
        self.connection: H2Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.connection is not None:
            self.connection.abort()

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            try:
                conn = await self._dial()
            except (HboneError, OSError, TimeoutError) as e:
                self.last_error = e
                log.info("H2R: dialing gateway %s:%s failed: %s", self.gateway.host, self.gateway.port, e)
            else:
                self.connects += 1
                delay = self.backoff_initial  # a connection that came up resets the backoff
                await conn.wait_closed()
                log.info("H2R: connection to the gateway closed; reconnecting")
            await asyncio.sleep(delay)  # reconnect backoff, doubling up to backoff_max
            delay = min(delay * 2, self.backoff_max)

    async def _dial(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        peer: dict[str, PeerInfo] = {}

        async def handle(stream: Stream) -> None:
            await self.inbound(stream, peer["gw"])

        def factory() -> H2Connection:
            return H2Connection(client=False, settings=self.settings, handler=handle)

        async with asyncio.timeout(self.connect_timeout):
            transport, conn = await loop.create_connection(
                factory, self.gateway.host, self.gateway.port, ssl=self.tls.client_context(), server_hostname=""
            )
        try:
            ident = check_server_peer(transport.get_extra_info("ssl_object"), self.gateway.identities)
        except PeerIdentityError:
            transport.abort()
            raise
        addr = transport.get_extra_info("peername")
        peer["gw"] = PeerInfo(ident, (addr[0], addr[1]) if addr else None, None, True)
        self.connection = conn
        return conn


def _fmt(addr: tuple[str, int] | None) -> str | None:
    return None if addr is None else (f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}")


def local_names_resolver(names: set[str], host: str = "127.0.0.1") -> Any:
    """For a node: tunnels addressed to one of its names go to `host` (the app is local, sidecar style); anything
    else, IP targets included, is refused (503): the node serves its names, nothing else it can reach."""
    lowered = {n.lower() for n in names}

    async def resolve(target: Authority) -> tuple[str, int]:
        if target.ip is None and target.host.lower() in lowered:
            return host, target.port
        raise UpstreamUnreachable(f"{target.host} is not a name of this node")

    return resolve
