"""The inbound HBONE handler (ztunnel's :15008): validate, authorize, dial, answer, relay.

Per stream (docs/hbone-spec.md): 400 for a method other than CONNECT/POST or a bad authority, 401 when
authorization denies, 503 when the upstream is unknown, is one of our own ports, refuses or times out (10 s).
`200` goes out only after the upstream TCP connect succeeded, optionally with a response `baggage` header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from hbone.authz.engine import Decision, evaluate
from hbone.authz.model import Connection, Policy
from hbone.errors import BadRequest, Denied, HboneError, Overloaded, SelfCall, UpstreamUnreachable
from hbone.limits import TUNNELS, pending_dial, record_trip
from hbone.net.relay import IDLE_TIMEOUT, TcpEnd, TcpPipe, open_pipe, relay
from hbone.net.stream import Stream
from hbone.net.tlsstream import TlsStream
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.responders import StreamResponder
from hbone.server import PeerInfo
from hbone.tls import MeshTls, check_client_peer
from hbone.wire.answers import answer_for
from hbone.wire.authority import Authority
from hbone.wire.baggage import PeerMetadata
from hbone.wire.tunnel_request import TunnelMode, TunnelRequest, parse_tunnel_request, tunnel_response

#: POST-mode path whose stream carries mTLS end to end (the Go project's era-A `/_hbone/mtls`); hbone.client
#: sends it when an endpoint asks for inner TLS.
INNER_MTLS_PATH = "/_hbone/mtls"

log = logging.getLogger("hbone.inbound")

Authorizer = Callable[[Connection], Decision]
Resolver = Callable[[Authority], Awaitable[tuple[str, int]]]


def policy_authorizer(policies: Collection[Policy], *, cache_size: int = 4096) -> Authorizer:
    """Evaluate `policies` (frozen here) for each connection. Decisions are a pure function of the policies and the
    connection (which has no source port), so they are remembered: tunnels from one peer to one target repeat
    the same question (up to `cache_size` distinct ones, then the memory starts afresh)."""
    frozen = tuple(policies)
    decided: dict[Connection, Decision] = {}

    def authorize(conn: Connection) -> Decision:
        decision = decided.get(conn)
        if decision is None:
            if len(decided) >= cache_size:
                decided.clear()
            decision = decided[conn] = evaluate(frozen, conn)
        return decision

    return authorize


async def resolve_default(target: Authority) -> tuple[str, int]:
    """IPs are used as given; hostnames are resolved with the system resolver (first address)."""
    if target.ip is not None:
        return target.host, target.port  # the canonical (compressed) text: str(ip) is ipaddress's Python code
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UpstreamUnreachable(f"cannot resolve {target.host}: {e}") from e
    return str(infos[0][4][0]), target.port


@dataclass
class InboundConfig:
    authorize: Authorizer = field(default=lambda conn: Decision(True, None, "allow-all"))
    dial_timeout: float = 10.0
    #: Seconds an established tunnel may move no byte either way before it is closed (None: never).
    idle_timeout: float | None = IDLE_TIMEOUT
    #: Our own ports: a CONNECT to one of them on a local address is a self call (503), like ztunnel.
    own_ports: frozenset[int] = frozenset({15008, 15006, 15001})
    #: Specific addresses we listen on (besides loopback and the unspecified address) that count as "ourselves".
    own_hosts: frozenset[str] = frozenset()
    resolve: Resolver = resolve_default
    response_baggage: PeerMetadata | None = None
    #: Our namespace, given to authorization as the destination workload's namespace.
    namespace: str = ""
    #: Terminates the inner mTLS of POST tunnels to `INNER_MTLS_PATH` (end-to-end identity through middle boxes).
    tls: MeshTls | None = None


_IPS: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}
_ANY = ipaddress.ip_address("0.0.0.0")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`ip_address(text)` or None, remembered: every tunnel parsed the same peer and target addresses three times
    (~3% of the churn server's CPU). Addresses are immutable; the cache is bounded."""
    try:
        return _IPS[text]
    except KeyError:
        pass
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if len(_IPS) >= 4096:
        _IPS.clear()
    _IPS[text] = ip
    return ip


_TEXTS: dict[int, tuple[object, str]] = {}


def _text(identity: object) -> str:
    """`str(identity)`, remembered per identity object (a connection's peer, our own certificate's): a SpiffeId's
    `__str__` was ~1 us of Python, twice per tunnel. The entry holds the object, so its id() is not reused."""
    hit = _TEXTS.get(id(identity))
    if hit is not None and hit[0] is identity:
        return hit[1]
    if len(_TEXTS) >= 4096:
        _TEXTS.clear()
    text = str(identity)
    _TEXTS[id(identity)] = (identity, text)
    return text


def _is_local(ip: str) -> bool:
    addr = _ip(ip)
    return addr is not None and (addr.is_loopback or addr.is_unspecified)


class InboundHandler:
    """Handles HBONE CONNECT/POST streams on one listener. Call it with each incoming stream.

    Gateways (egress, H2R, PROXY v2 inbound) subclass it; these methods are the supported override points:
    `handle_stream` (the whole per-stream flow), `admit` (resolve + self-call check + authorization, returns the
    address to dial), `dial` (upstream TCP connect) and `relay` (answer 200, relay). Each stream runs inside
    a `TunnelGuard`: raise an `HboneError` to refuse it (status + reason before the 200, RST_STREAM after), and
    the guard finishes the access record exactly once, cancellation included.
    """

    def __init__(self, config: InboundConfig) -> None:
        self.config = config
        self.active = 0
        self.total = 0
        # The relay's callback path (a TcpPipe upstream) replaces dial + relay unless a subclass overrides either.
        cls = type(self)
        self._pipe_ok = cls.dial is InboundHandler.dial and cls.relay is InboundHandler.relay

    async def __call__(self, stream: Stream, peer: PeerInfo) -> None:
        tls = self.config.tls
        record = AccessRecord(
            "inbound",
            src_identity=_text(peer.identity) if peer.identity else None,
            dst_identity=_text(tls.manager.identity) if tls is not None else None,  # we answer as the destination
            src_addr=_fmt(peer.address),
        )
        self.total += 1
        with TunnelGuard(record, StreamResponder(stream)) as guard:
            if not TUNNELS.try_acquire():
                raise Overloaded(f"too many tunnels in this process (max_tunnels {TUNNELS.limit})")
            self.active += 1
            try:
                await self.handle_stream(stream, peer, guard)
            finally:
                self.active -= 1
                TUNNELS.release()

    def add_own_address(self, host: str, port: int) -> None:
        """A listener of this process was bound to `host:port`: tunnels to it are self calls (503)."""
        self.config.own_ports = self.config.own_ports | {port}
        if not _is_local(host):
            self.config.own_hosts = self.config.own_hosts | {host}

    async def handle_stream(self, stream: Stream, peer: PeerInfo, guard: TunnelGuard) -> None:
        record = guard.record
        req = parse_tunnel_request(stream.request_headers)
        record.mode, record.dst_addr = req.mode.value, str(req.target)
        if req.mode is TunnelMode.POST and req.path == INNER_MTLS_PATH:
            return await self._handle_inner_tls(stream, req, peer, guard)
        host, port = await self.admit(req, peer, record)
        if self._pipe_ok:
            return await self._relay_pipe(stream, await self._dial_pipe(host, port), guard)
        reader, writer = await self.dial(host, port)
        await self.relay(stream, stream, reader, writer, guard)

    async def _handle_inner_tls(self, stream: Stream, req: TunnelRequest, peer: PeerInfo, guard: TunnelGuard) -> None:
        """POST to /_hbone/mtls: answer 200 at once (the middle box needs it), then authenticate end to end.

        Failures after the inner handshake can no longer be a status code; the stream is reset instead
        (REFUSED_STREAM when denied, CONNECT_ERROR when the upstream is unreachable).
        """
        if self.config.tls is None:
            raise Denied("inner mTLS requested but this server has no certificate")
        stream.send_headers(tunnel_response(200, peer=self.config.response_baggage))
        try:
            inner = await TlsStream.server(stream, self.config.tls.server_context())
            ident = check_client_peer(inner.ssl_object, self.config.tls.trust_domain)
            guard.record.src_identity = str(ident)
            host, port = await self.admit(req, PeerInfo(ident, peer.address), guard.record)
            reader, writer = await self.dial(host, port)
        except (HboneError, OSError) as e:  # OSError: the inner TLS handshake (ssl.SSLError)
            # The 200 went out for the middle box; the status that counts is the refusal's, carried by a reset.
            answer = answer_for(e)
            stream.reset(answer.h2_code)
            guard.finish(answer.status, f"inner: {answer.reason}")
            return
        await self.relay(stream, inner, reader, writer, guard)

    async def relay(
        self,
        stream: Stream,
        pipe: Stream | TlsStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        guard: TunnelGuard,
    ) -> None:
        try:
            if pipe is stream:
                stream.send_headers(tunnel_response(200, peer=self.config.response_baggage))
            guard.answered(200)
            guard.established(stream, inbound=True)
            result = await relay(pipe, TcpEnd(reader, writer), idle_timeout=self.config.idle_timeout)
        finally:
            writer.close()
        guard.relayed(result)

    async def admit(self, req: TunnelRequest, peer: PeerInfo, record: AccessRecord) -> tuple[str, int]:
        host, port = await self.config.resolve(req.target)
        if port in self.config.own_ports and (_is_local(host) or host in self.config.own_hosts):
            record_trip("self_call")
            raise SelfCall(f"refusing a tunnel to this proxy's own port {port}")
        src_ip = (_ip(peer.address[0]) or _ANY) if peer.address else _ANY
        dst_ip = _ip(host) or _ANY
        decision = self.config.authorize(
            Connection(peer.identity, src_ip, dst_ip, port, dst_namespace=self.config.namespace)
        )
        record.policy = decision.policy
        if not decision.allowed:
            raise Denied(decision.reason if decision.reason.startswith("denied") else f"denied: {decision.reason}")
        return host, port

    async def _relay_pipe(self, stream: Stream, pipe: TcpPipe, guard: TunnelGuard) -> None:
        """`relay` on the callback path: the same answer, byte counts and records, no tasks."""
        try:
            stream.send_headers(tunnel_response(200, peer=self.config.response_baggage))
        except BaseException:
            pipe.abort()
            raise
        guard.answered(200)
        guard.established(stream, inbound=True)
        result = await relay(stream, pipe, idle_timeout=self.config.idle_timeout)
        guard.relayed(result)

    async def _dial_pipe(self, host: str, port: int) -> TcpPipe:
        with pending_dial():
            return await self._open_pipe(host, port)

    async def _open_pipe(self, host: str, port: int) -> TcpPipe:
        try:
            return await open_pipe(host, port, self.config.dial_timeout)
        except TimeoutError as e:
            raise UpstreamUnreachable(f"connect to {host}:{port} timed out after {self.config.dial_timeout}s") from e
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise UpstreamUnreachable(f"connect to {host}:{port} failed: {why}") from e

    async def dial(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            with pending_dial():
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.config.dial_timeout)
        except TimeoutError as e:
            raise UpstreamUnreachable(f"connect to {host}:{port} timed out after {self.config.dial_timeout}s") from e
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise UpstreamUnreachable(f"connect to {host}:{port} failed: {why}") from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer


def _fmt(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["BadRequest", "InboundConfig", "InboundHandler", "PeerInfo", "policy_authorizer"]
