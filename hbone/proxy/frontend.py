"""What every capture front end shares: open the upstream a route asks for, and relay bytes to it.

`Dialer.open(target)` consults the route table and returns an `Upstream` whose `pipe` is stream-shaped (the
HBONE tunnel's stream, the inner stream of a double-HBONE tunnel, or a TCP connection as a `TcpEnd`), so one
`hbone.net.relay.relay` carries every case with half-close and the idle timeout. Errors come out of the
`hbone.errors` tree with the right codes for each front end: a refused route is `RouteDenied` (403 / SOCKS 0x02),
a dial timeout `DialTimeout` (504 / 0x06), a failed dial `DialFailed` (502 / 0x04-0x05 from the OS error).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hbone.client import Endpoint, HboneClient
from hbone.errors import ConfigError, UpstreamUnreachable
from hbone.identity.spiffe import SpiffeId
from hbone.limits import pending_dial
from hbone.net.relay import IDLE_TIMEOUT, RelayResult, TcpEnd
from hbone.net.relay import relay as relay_ends
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.double_hbone import open_double_hbone
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.routing import Action, Decision, DoubleHbone, Route, RouteTable, Via
from hbone.wire.authority import Authority
from hbone.wire.tunnel_request import TunnelMode


class DialFailed(UpstreamUnreachable):
    """A direct TCP connect failed; `os_error` keeps the cause for SOCKS reply codes."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class DialTimeout(UpstreamUnreachable, TimeoutError):
    """A direct TCP (or TLS) connect did not finish in time (CONNECT proxies answer 504)."""

    http_status = 504


@dataclass
class Upstream:
    """The far side for one client connection."""

    pipe: Any  # Stream | TcpEnd: stream-shaped for the relay
    decision: Decision | None
    peer_identity: SpiffeId | None = None
    #: Seconds the relay may move no byte either way before it closes both sides (None: never).
    idle_timeout: float | None = IDLE_TIMEOUT

    def close(self) -> None:
        """Give the upstream up: a TCP connection is closed, a tunnel stream still open is reset (CANCEL); a
        double-HBONE tunnel then closes its inner connection and outer stream itself."""
        close = getattr(self.pipe, "close", None) or getattr(self.pipe, "reset", None)
        if close is not None:
            close()


async def dial_tcp(
    host: str,
    port: int,
    *,
    connect_timeout: float = 10.0,
    mark: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect (optionally TLS), with SO_MARK so capture rules can skip the proxy's own traffic."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            with pending_dial():
                sock: socket.socket | None = None
                if mark is not None:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                    family, _, _, _, addr = infos[0]
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                        await loop.sock_connect(sock, addr)
                    except BaseException:
                        sock.close()
                        raise
                kwargs: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
                if ssl_context is not None:
                    kwargs["ssl"] = ssl_context
                    kwargs["server_hostname"] = server_hostname if server_hostname is not None else host
                reader, writer = await asyncio.open_connection(**kwargs)
    except TimeoutError as e:
        raise DialTimeout(f"connect to {host}:{port} timed out after {connect_timeout}s") from e
    except ssl.SSLError as e:
        name = server_hostname if server_hostname is not None else host
        if isinstance(e, ssl.SSLCertVerificationError):
            raise DialFailed(f"TLS to {name} ({host}:{port}): certificate verify failed: {e.verify_message}") from e
        raise DialFailed(f"TLS to {name} ({host}:{port}) failed: {e.reason or e}") from e
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise DialFailed(f"connect to {host}:{port} failed: {why}", e) from e
    sock_ = writer.get_extra_info("socket")
    if sock_ is not None:
        with contextlib.suppress(OSError):
            sock_.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def endpoint_for(via: Via) -> Endpoint:
    host = str(via.address.ip) if via.address.ip is not None else via.address.host
    mode = TunnelMode.POST if via.post else TunnelMode.CONNECT
    return Endpoint(host, via.address.port, via.identities, mode, None, via.inner_tls)


def route_headers(route: Route) -> list[tuple[str, str]]:
    headers = list(route.headers)
    if route.token_file:
        try:
            token = Path(route.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"route {route.name!r}: cannot read token_file {route.token_file}: {e}") from e
        headers.append(("authorization", f"Bearer {token}"))
    return headers


class Opener(Protocol):
    """Anything that opens upstreams for a front end: a `Dialer`, or the H2R gateway in front of one."""

    async def open(
        self, target: Authority, *, src: tuple[str, int] | None = None, record: AccessRecord | None = None
    ) -> Upstream: ...


class Dialer:
    """Opens upstreams by route: HBONE via the route's server, or a direct dial."""

    def __init__(
        self,
        client: HboneClient | None,
        routes: RouteTable,
        *,
        dial_timeout: float = 10.0,
        mark: int | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
    ) -> None:
        self.client = client
        self.routes = routes
        self.dial_timeout = dial_timeout
        self.mark = mark
        self.idle_timeout = idle_timeout

    async def open(
        self, target: Authority, *, src: tuple[str, int] | None = None, record: AccessRecord | None = None
    ) -> Upstream:
        decision = self.routes.decide(target)
        if record is not None:
            record.dst_addr = str(decision.target)
            record.policy = decision.route.name
        if decision.action is Action.DIRECT:
            host = str(decision.target.ip) if decision.target.ip is not None else decision.target.host
            reader, writer = await dial_tcp(
                host, decision.target.port, connect_timeout=self.dial_timeout, mark=self.mark
            )
            return Upstream(TcpEnd(reader, writer), decision, idle_timeout=self.idle_timeout)
        if self.client is None:
            raise ConfigError(f"route {decision.route.name!r} needs HBONE but no client is configured")
        if decision.route.double_hbone is not None:
            return await self._double(decision, decision.route.double_hbone, src, record)
        assert decision.route.via is not None  # table parsing guarantees it for hbone routes
        tunnel = await self.client.open(
            decision.target,
            endpoint_for(decision.route.via),
            forwarded_for=_fmt(src),
            extra_headers=route_headers(decision.route),
        )
        if record is not None:
            record.dst_identity = str(tunnel.peer_identity) if tunnel.peer_identity else None
        return Upstream(tunnel.stream, decision, tunnel.peer_identity, self.idle_timeout)

    async def _double(
        self, decision: Decision, double: DoubleHbone, src: tuple[str, int] | None, record: AccessRecord | None
    ) -> Upstream:
        assert self.client is not None
        gw = double.gateway
        gateway = Endpoint(str(gw.ip) if gw.ip is not None else gw.host, gw.port, double.gateway_identities)
        tunnel = await open_double_hbone(
            self.client, gateway, decision.target, double.identities, network=double.network, forwarded_for=_fmt(src)
        )
        if record is not None:
            record.mode = "DOUBLE-HBONE"
            record.dst_identity = str(tunnel.inner_identity)
        return Upstream(tunnel.stream, decision, tunnel.inner_identity, self.idle_timeout)


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: Upstream,
    guard: TunnelGuard,
    leftover: bytes = b"",
) -> RelayResult:
    """Relay a front end's client connection <-> upstream (the success answer went out: 200 unless the guard says
    otherwise), then finish the access record. `leftover`: client bytes the front end read past its handshake;
    they go upstream first. Never raises but cancellation."""
    if guard.status is None:
        guard.answered(200)
    guard.established(upstream.pipe, inbound=False)
    try:
        result = await relay_ends(TcpEnd(reader, writer, leftover), upstream.pipe, idle_timeout=upstream.idle_timeout)
    finally:
        upstream.close()
    guard.relayed(result)
    return result


def _fmt(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def fmt_addr(addr: Any) -> str | None:
    """`host:port` text for a socket address tuple (or None)."""
    if not addr:
        return None
    return _fmt((str(addr[0]), int(addr[1])))


def errno_of(exc: BaseException) -> int | None:
    cause = getattr(exc, "os_error", None) or exc.__cause__
    return cause.errno if isinstance(cause, OSError) else None


def is_refused(exc: BaseException) -> bool:
    return errno_of(exc) == errno.ECONNREFUSED
