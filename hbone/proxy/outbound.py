"""Outbound routing for a self-configuring node proxy: where a connection to VIP:port or host:port goes.

`Router.route()` is pure (DESIGN §5.7): mesh snapshot + source workload + target → a `Route`, following ztunnel's
`src/proxy/outbound.rs` (docs/hbone-spec.md):

* a service VIP:port or hostname:port → the service's waypoint if it names one (CONNECT authority stays VIP:port,
  the waypoint's identity is expected); else a healthy endpoint, round robin within the closest locality tier;
* an endpoint with `tunnel_protocol: HBONE` → HBONE to `endpoint-ip:15008`, authority `endpoint-ip:target-port`,
  expected identities = the workload's plus the service's `subject_alt_names`;
* an endpoint on another network with a `network_gateway` → double HBONE: the outer tunnel to the gateway with
  authority `service-host:port`, an inner mTLS + HTTP/2 CONNECT with the same authority plus
  `x-forwarded-network`, expecting the service's identities end to end;
* a workload addressed directly → its own waypoint if any, else as above; a workload without HBONE, or an address
  the mesh does not know → plain TCP passthrough (ztunnel's passthrough to the original destination).

`OutboundProxy` is the thin asyncio shell that carries one accepted TCP connection along a route; front ends
(forward ports, SOCKS5, HTTP CONNECT, REDIRECT) call `OutboundProxy.handle(source, target, reader, writer)`.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hbone.client import Endpoint, HboneClient
from hbone.errors import TunnelError
from hbone.net.relay import IDLE_TIMEOUT, RelayResult, TcpEnd, relay
from hbone.net.stream import Stream
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.double_hbone import open_inner
from hbone.proxy.frontend import dial_tcp, fmt_addr
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.responders import TcpResponder
from hbone.state.endpoints import RoundRobin
from hbone.state.model import GatewayAddress, NamespacedHostname, Service, TunnelProtocol, Workload
from hbone.state.snapshot import MeshSnapshot
from hbone.wire.authority import Authority


class NoRoute(TunnelError):
    """The mesh knows the destination but cannot reach it now (no healthy endpoint, unknown waypoint): 503."""


class RouteKind(enum.Enum):
    DIRECT = "direct"  # HBONE to the destination workload's node
    WAYPOINT = "waypoint"  # HBONE to the waypoint, authority = the original VIP:port
    GATEWAY = "gateway"  # double HBONE through the remote network's gateway
    PASSTHROUGH = "passthrough"  # plain TCP, outside the mesh


@dataclass(frozen=True, slots=True)
class Hop:
    """One HBONE server to dial and the identities its certificate may carry (empty: any in the mesh)."""

    host: str
    port: int
    identities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    authority: Authority  # CONNECT :authority (or the TCP destination for passthrough)
    hop: Hop | None = None
    inner_identities: tuple[str, ...] = ()  # double HBONE: who must terminate the inner mTLS
    forwarded_host: str | None = None  # service hostname for `forwarded: host=`
    service: Service | None = None
    workload: Workload | None = None


def _first_address(w: Workload) -> str | None:
    return str(w.addresses[0]) if w.addresses else None


class Router:
    """Pure routing over mesh snapshots. `network` is the local network; `hbone_port` where node proxies listen."""

    def __init__(self, *, network: str = "", hbone_port: int = 15008, round_robin: RoundRobin | None = None) -> None:
        self.network = network
        self.hbone_port = hbone_port
        self.rr = round_robin or RoundRobin()

    def route(self, snap: MeshSnapshot, source: Workload | None, target: Authority) -> Route:
        if target.ip is None:
            svc = snap.service_by_host(target.host, source.namespace if source else None)
            if svc is None:
                raise NoRoute(f"unknown service host {target.host}")
            return self._service(snap, source, svc, target)
        svc = snap.service_by_vip(target.ip, target.port, self.network)
        if svc is not None:
            return self._service(snap, source, svc, target)
        dest = snap.workload_by_address(target.ip, self.network)
        if dest is None:
            return Route(RouteKind.PASSTHROUGH, target)
        if dest.waypoint is not None and not self._is_waypoint(snap, source, dest.waypoint):
            return self._via_waypoint(snap, dest.waypoint, target, None, dest)
        return self._to_workload(dest, target.port, target, None, ())

    def _service(self, snap: MeshSnapshot, source: Workload | None, svc: Service, target: Authority) -> Route:
        if svc.waypoint is not None and not self._is_waypoint(snap, source, svc.waypoint):
            return self._via_waypoint(snap, svc.waypoint, target, svc, None)
        eps = snap.endpoints(svc, target.port, source=source)
        ep = self.rr.pick(f"{svc.key}:{target.port}", eps)
        if ep is None:
            raise NoRoute(f"no healthy endpoint for {svc.hostname}:{target.port}")
        w = ep.workload
        if w.network != self.network:
            if w.network_gateway is None:
                raise NoRoute(f"endpoint {w.uid} is on network {w.network!r} and has no network gateway")
            gw = self._gateway_hop(snap, w.network_gateway)
            authority = Authority.from_parts(svc.hostname, target.port)
            inner = tuple(svc.subject_alt_names) or (str(w.identity),)
            return Route(RouteKind.GATEWAY, authority, gw, inner, svc.hostname, svc, w)
        return self._to_workload(w, ep.port, target, svc, svc.subject_alt_names)

    def _to_workload(
        self, w: Workload, port: int, target: Authority, svc: Service | None, sans: Sequence[str]
    ) -> Route:
        addr = _first_address(w)
        if addr is None:
            raise NoRoute(f"workload {w.uid} has no address")
        authority = Authority.from_parts(ipaddress.ip_address(addr), port)
        host = svc.hostname if svc is not None else None
        if w.tunnel_protocol is not TunnelProtocol.HBONE:
            return Route(RouteKind.PASSTHROUGH, authority, forwarded_host=host, service=svc, workload=w)
        hop = Hop(addr, self.hbone_port, (str(w.identity), *sans))
        return Route(RouteKind.DIRECT, authority, hop, forwarded_host=host, service=svc, workload=w)

    def _via_waypoint(
        self, snap: MeshSnapshot, gw: GatewayAddress, target: Authority, svc: Service | None, w: Workload | None
    ) -> Route:
        host = svc.hostname if svc is not None else None
        return Route(
            RouteKind.WAYPOINT, target, self._gateway_hop(snap, gw), forwarded_host=host, service=svc, workload=w
        )

    def _gateway_workloads(self, snap: MeshSnapshot, gw: GatewayAddress) -> tuple[Workload, ...]:
        dest = gw.destination
        if isinstance(dest, NamespacedHostname):
            svc = snap.service_by_host(f"{dest.namespace}/{dest.hostname}")
            if svc is None:
                return ()
            return tuple(w for w in snap.endpoint_workloads(svc) if w.healthy)
        w = snap.workload_by_address(dest.address, dest.network)
        return (w,) if w is not None else ()

    def _gateway_hop(self, snap: MeshSnapshot, gw: GatewayAddress) -> Hop:
        """A waypoint or network gateway: one of its workloads (expecting its identity), or the bare address."""
        workloads = [w for w in self._gateway_workloads(snap, gw) if w.addresses]
        if workloads:
            w = workloads[0] if len(workloads) == 1 else self._pick(str(gw.destination), workloads)
            return Hop(str(w.addresses[0]), gw.hbone_mtls_port, (str(w.identity),))
        dest = gw.destination
        if isinstance(dest, NamespacedHostname):
            raise NoRoute(f"gateway {dest.namespace}/{dest.hostname} has no workloads")
        return Hop(str(dest.address), gw.hbone_mtls_port)

    def _pick(self, key: str, workloads: Sequence[Workload]) -> Workload:
        from hbone.state.endpoints import Endpoint as StateEndpoint

        ep = self.rr.pick(key, [StateEndpoint(w, 0) for w in workloads])
        assert ep is not None
        return ep.workload

    def _is_waypoint(self, snap: MeshSnapshot, source: Workload | None, gw: GatewayAddress) -> bool:
        """Traffic from the waypoint itself goes to the destination, not back to the waypoint."""
        return source is not None and source in self._gateway_workloads(snap, gw)


# --- the asyncio shell ---------------------------------------------------------------------------------------


ClientFor = Callable[[Workload | None], HboneClient]


class OutboundProxy:
    """Carries accepted TCP connections along routes. `client_for(source)` gives the source's HBONE client."""

    def __init__(
        self,
        router: Router,
        snapshot: Callable[[], MeshSnapshot],
        client_for: ClientFor,
        *,
        network: str = "",
        dial_timeout: float = 10.0,
        idle_timeout: float | None = IDLE_TIMEOUT,
    ) -> None:
        self.router = router
        self.snapshot = snapshot
        self.client_for = client_for
        self.network = network
        self.dial_timeout = dial_timeout
        self.idle_timeout = idle_timeout
        self.active = 0
        self.routes: dict[RouteKind, int] = {}

    async def handle(
        self, source: Workload | None, target: Authority, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> RelayResult | None:
        """Route and relay one connection with its access record (direction `outbound`); a failure is recorded and
        the connection closed (None). Passthrough routes dial the destination directly (ztunnel's passthrough)."""
        peer = writer.get_extra_info("peername")
        record = AccessRecord(
            "outbound", src_identity=str(source.identity) if source else None, src_addr=fmt_addr(peer),
            dst_addr=str(target),
        )  # fmt: skip
        with TunnelGuard(record, TcpResponder(writer)) as guard:
            route = self.router.route(self.snapshot(), source, target)
            self.routes[route.kind] = self.routes.get(route.kind, 0) + 1
            record.policy = route.kind.value
            if route.kind is RouteKind.PASSTHROUGH:
                record.mode = "PASSTHROUGH"
                host = str(route.authority.ip or route.authority.host)
                up: TcpEnd | Stream = TcpEnd(
                    *await dial_tcp(host, route.authority.port, connect_timeout=self.dial_timeout)
                )
            else:
                up = await self.open_route(source, route, peer)
            guard.answered(200)
            guard.established(up, inbound=False)
            self.active += 1
            try:
                result = await relay(TcpEnd(reader, writer), up, idle_timeout=self.idle_timeout)
            finally:
                self.active -= 1
            guard.relayed(result)
            return result
        return None

    async def open_route(self, source: Workload | None, route: Route, peer: object = None) -> Stream:
        """Open the HBONE tunnel(s) of `route`; returns the stream to relay bytes on (for a network gateway, the
        inner stream of the double-HBONE tunnel, which closes its inner connection when it finishes)."""
        assert route.hop is not None
        client = self.client_for(source)
        forwarded_for = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None
        ep = Endpoint(route.hop.host, route.hop.port, route.hop.identities)
        tunnel = await client.open(
            route.authority, ep, forwarded_for=forwarded_for, forwarded_host=route.forwarded_host
        )
        if route.kind is not RouteKind.GATEWAY:
            return tunnel.h2
        double = await open_inner(
            client,
            tunnel,
            route.authority,
            route.inner_identities,
            network=self.network,
            forwarded_host=route.forwarded_host,
        )
        return double.stream
