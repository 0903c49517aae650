"""Composition root of a self-configuring node proxy (`microxds agent`), ztunnel-like.

    control plane ──Delta xDS (Address, Authorization)──► AmbientHandler ──► MeshState ──► snapshots
    control plane ──CreateCertificate (per local workload)──► IdentityManager ──► MeshTls
    :15008 on each local workload's IP ──► InboundHandler (authorize = snapshot.authorize, re-checked on change)
    forward ports / front ends ──► OutboundProxy (Router: VIP/host → endpoint, waypoint, gateway) ──► HboneClient

The control plane is microxds (mTLS with a node certificate; the node identity may impersonate its workloads) or
istiod (server-auth TLS plus a bearer token, `NodeProfile`). Nothing here parses protobuf or speaks a protocol:
those live in `microxds.client`, `microxds.istio` and `hbone`. Channels are injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbone.client import HboneClient
from hbone.errors import BadRequest, ConfigError, UpstreamUnreachable
from hbone.grpc.client import Channel
from hbone.identity import FileSource, IdentityManager
from hbone.net.relay import IDLE_TIMEOUT
from hbone.net.stream import Stream
from hbone.proxy.enforcing import EnforcingInbound
from hbone.proxy.inbound import InboundConfig
from hbone.proxy.listener import start_listener
from hbone.proxy.outbound import OutboundProxy, Router
from hbone.server import HboneServer
from hbone.state import MeshSnapshot, MeshState, StateChange, Workload
from hbone.state.endpoints import resolve_target_port
from hbone.tls import MeshTls
from hbone.wire.authority import Authority, parse_authority
from microxds.client.ads import AdsClient
from microxds.client.ambient import AmbientHandler
from microxds.controlplane import control_plane_channel, istiod_identity, start_ambient_ads
from microxds.istio.ca import DEFAULT_TTL, IstioCASource
from microxds.istio.node import NodeProfile
from microxds.resources import ADDRESS
from microxds.server.app import parse_address

log = logging.getLogger("microxds.agent")


@dataclass(frozen=True)
class WorkloadRef:
    """A local workload, found in the mesh state by `namespace/name` (or uid when it contains more slashes)."""

    ref: str

    def find(self, snap: MeshSnapshot) -> Workload | None:
        w = snap.workload(self.ref)
        if w is not None:
            return w
        ns, _, name = self.ref.rpartition("/")
        for cand in snap.workloads_in_namespace(ns or "default"):
            if cand.name == name:
                return cand
        return None


@dataclass(frozen=True)
class Forward:
    """A plain TCP port on the workload's address whose connections go to `target` through the mesh."""

    listen: str  # host:port
    target: str  # vip:port or hostname:port
    workload: str  # WorkloadRef of the source


@dataclass
class AgentConfig:
    xds_address: str  # HOST:PORT, or several replicas of one control plane: HOST:PORT,HOST:PORT
    ca_address: str | None = None  # default: the xDS address
    transport: str = "mtls"  # mtls (node certificate) | tls (server-auth + bearer token) | plaintext
    certs: Path | None = None  # node identity for mtls
    # Accepted control-plane SPIFFE ids (mtls). Empty: istiod's, spiffe://<node trust domain>/ns/istio-system/sa/istiod
    # (ztunnel's default); never "any", which let any workload certificate pose as the control plane.
    control_plane_identities: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()
    forwards: tuple[Forward, ...] = ()
    hbone_port: int = 15008
    network: str = ""
    cert_ttl: dt.timedelta = DEFAULT_TTL
    impersonate: bool = True  # the node identity asks for its workloads' certificates
    on_demand: bool = False
    profile: NodeProfile = field(default_factory=lambda: NodeProfile(token_path=None))
    ready_timeout: float = 30.0
    # Seconds an established tunnel (outbound or inbound) may move no byte either way before it is closed; None: never.
    tunnel_idle_timeout: float | None = IDLE_TIMEOUT
    # admin / metrics / readiness ports as written (flags or config keys; `hbone.admin.options`)
    admin: str | None = None
    metrics: str | None = None
    readiness: str | None = None


# --- local workloads ---------------------------------------------------------------------------------------------


@dataclass
class LocalWorkload:
    workload: Workload
    identity: IdentityManager
    tls: MeshTls
    client: HboneClient
    inbound: EnforcingInbound
    server: HboneServer
    address: tuple[str, int]


class Agent:
    """`await start()` (returns once xDS is ready and local workloads are serving), then `await stop()`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        xds_channel: Channel | None = None,
        ca_channel: Channel | None = None,
    ) -> None:
        self.config = config
        self.state = MeshState()
        self.handler = AmbientHandler(self.state)
        self._xds_channel = xds_channel
        self._ca_channel = ca_channel
        self._replica_channels: list[Channel] = []
        self.node_identity: IdentityManager | None = None
        self.node_tls: MeshTls | None = None
        self.ads: AdsClient | None = None
        self.workloads: dict[str, LocalWorkload] = {}
        self.router = Router(network=config.network, hbone_port=config.hbone_port)
        self.outbound = OutboundProxy(
            self.router,
            self.state.snapshot,
            self._client_for,
            network=config.network,
            idle_timeout=config.tunnel_idle_timeout,
        )
        self.forward_addresses: dict[str, tuple[str, int]] = {}
        self._forward_servers: list[asyncio.Server] = []
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._closing = False
        self.workload_ready = asyncio.Event()

    # -- control plane --------------------------------------------------------------------------------------------

    def control_plane_identities(self) -> tuple[str, ...]:
        """The control-plane SPIFFE ids accepted over mtls: the configured ones, else istiod's in our trust domain."""
        if self.config.control_plane_identities:
            return self.config.control_plane_identities
        if self.node_tls is None:
            raise ConfigError("transport mtls: set control_plane_identities (the control plane's SPIFFE ids)")
        return (istiod_identity(self.node_tls),)

    def _channel(self, address: str, *, ca: bool) -> Channel:
        cfg = self.config
        idents = self.control_plane_identities() if cfg.transport == "mtls" and self.node_tls is not None else ()
        return control_plane_channel(
            address, cfg.transport, cfg.profile, node_tls=self.node_tls, identities=idents, ca=ca
        )

    async def start(self) -> None:
        cfg = self.config
        if cfg.transport == "mtls" and cfg.certs is not None:
            self.node_identity = IdentityManager(FileSource(cfg.certs))
            await self.node_identity.start()
            self.node_tls = MeshTls(self.node_identity)
            log.info("control plane identities accepted: %s", ", ".join(self.control_plane_identities()))
        # Several control-plane replicas (`a:15012,b:15012`): xDS fails over between them; the CA is asked at the
        # first one unless ca_address says otherwise.
        addresses = [a.strip() for a in cfg.xds_address.split(",") if a.strip()]
        if not addresses:
            raise ConfigError("xds_address is empty")
        if self._xds_channel is None:
            self._xds_channel = self._channel(addresses[0], ca=False)
        self._replica_channels = [self._xds_channel, *(self._channel(a, ca=False) for a in addresses[1:])]
        if self._ca_channel is None:
            ca_address = cfg.ca_address or addresses[0]
            same = ca_address == addresses[0]
            self._ca_channel = self._xds_channel if same else self._channel(ca_address, ca=True)
        self._unsubscribe = self.state.subscribe(self._on_change)
        self.ads = await start_ambient_ads(
            self._replica_channels, cfg.profile, self.handler,
            on_demand=cfg.on_demand, ready_timeout=cfg.ready_timeout, address=cfg.xds_address,
        )  # fmt: skip
        if cfg.on_demand:
            for ref in cfg.workloads:
                with contextlib.suppress(TimeoutError):
                    await self.ads.lookup(ADDRESS, ref if ref.count("/") > 1 else f"Kubernetes//Pod/{ref}")
        self._reconcile(self.state.snapshot())
        if self._pending:
            await asyncio.gather(*self._pending.values())
        for fwd in cfg.forwards:
            await self._start_forward(fwd)

    async def stop(self) -> None:
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._pending.values():
            task.cancel()
        for srv in self._forward_servers:
            srv.close()
        if self.ads is not None:
            await self.ads.stop()
        for lw in self.workloads.values():
            await lw.server.close()
            await lw.client.close()
            await lw.identity.stop()
        for ch in {self._xds_channel, self._ca_channel, *self._replica_channels}:
            if ch is not None:
                await ch.close()
        if self.node_identity is not None:
            await self.node_identity.stop()

    # -- state changes ----------------------------------------------------------------------------------------

    def _on_change(self, change: StateChange, snap: MeshSnapshot) -> None:
        if change.policies or change.workloads:
            for lw in self.workloads.values():
                lw.inbound.recheck(snap)
        if change.workloads:
            self._reconcile(snap)

    def _reconcile(self, snap: MeshSnapshot) -> None:
        """Start serving every configured local workload the mesh now knows."""
        if self._closing:
            return
        for ref in self.config.workloads:
            if ref in self.workloads or ref in self._pending:
                continue
            w = WorkloadRef(ref).find(snap)
            if w is None:
                continue
            task = asyncio.get_running_loop().create_task(self._start_workload(ref, w))
            self._pending[ref] = task
            task.add_done_callback(lambda _t, r=ref: self._pending.pop(r, None))  # type: ignore[misc]

    async def _start_workload(self, ref: str, w: Workload) -> None:
        cfg = self.config
        if not w.addresses:
            raise ConfigError(f"local workload {ref} has no address to listen on")
        assert self._ca_channel is not None
        source = IstioCASource(self._ca_channel, w.identity, ttl=cfg.cert_ttl, impersonate=cfg.impersonate)
        identity = IdentityManager(source)
        await identity.start()
        tls = MeshTls(identity)
        meta = w.peer_metadata()
        client = HboneClient(tls, metadata=meta)
        inbound = EnforcingInbound(
            self.state,
            InboundConfig(
                namespace=w.namespace, tls=tls, response_baggage=meta, resolve=self._resolver(w),
                own_ports=frozenset({cfg.hbone_port, 15008, 15006, 15001}),
                idle_timeout=cfg.tunnel_idle_timeout,
            ),
        )  # fmt: skip
        server = HboneServer(tls, inbound, grpc=None)
        address = await server.listen(str(w.addresses[0]), cfg.hbone_port)
        self.workloads[ref] = LocalWorkload(w, identity, tls, client, inbound, server, address)
        log.info("serving %s (%s) on %s:%d", ref, w.identity, *address)
        if len(self.workloads) == len(cfg.workloads):
            self.workload_ready.set()

    def _resolver(self, w: Workload) -> Callable[[Authority], Awaitable[tuple[str, int]]]:
        """Inbound targets, only ever this workload (ztunnel's rule; anything else is 400, never relayed): one of
        its own IPs; the VIP of a service that selects it, or a service hostname (double HBONE, east-west) through
        the service table preferring our namespace, both to this workload's target port."""
        own = {str(a) for a in w.addresses}

        async def resolve(target: Authority) -> tuple[str, int]:
            snap = self.state.snapshot()
            if target.ip is not None:
                if str(target.ip) in own:
                    return str(target.ip), target.port
                vip = snap.service_by_vip(target.ip, target.port, w.network)
                if vip is None or vip not in snap.services_of_workload(w):
                    raise BadRequest(f"{target.ip} is not a workload this node serves for {w.uid}")
                port = resolve_target_port(vip, target.port, w)
                if port is None or not w.addresses:
                    raise UpstreamUnreachable(f"no service port {target} on {w.uid}")
                return str(w.addresses[0]), port
            svc = snap.service_by_host(target.host, w.namespace)
            port = resolve_target_port(svc, target.port, w) if svc is not None else None
            if port is None or not w.addresses:
                raise UpstreamUnreachable(f"no service port {target} on {w.uid}")
            return str(w.addresses[0]), port

        return resolve

    # -- outbound -------------------------------------------------------------------------------------------------

    def local(self, ref: str) -> LocalWorkload:
        lw = self.workloads.get(ref)
        if lw is None:
            raise ConfigError(f"{ref} is not a local workload of this agent (or not started yet)")
        return lw

    def _client_for(self, source: Workload | None) -> HboneClient:
        for lw in self.workloads.values():
            if source is not None and lw.workload.uid == source.uid:
                return lw.client
        raise ConfigError(f"no local workload {source.uid if source else '(none)'} to send from")

    async def _start_forward(self, fwd: Forward) -> None:
        src = self.local(fwd.workload)
        target = parse_authority(fwd.target)
        host, port = parse_address(fwd.listen, "127.0.0.1")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                source = self.local(fwd.workload).workload
            except ConfigError as exc:  # the workload left this node
                log.info("forward %s -> %s: %s", fwd.listen, fwd.target, exc)
                writer.close()
                return
            # Failures are answered (a close) and logged in the tunnel's access record by the outbound proxy.
            await self.outbound.handle(source, target, reader, writer)

        srv = await start_listener(handle, host, port)
        self._forward_servers.append(srv)
        sock: Any = srv.sockets[0].getsockname()
        self.forward_addresses[fwd.listen] = (sock[0], sock[1])
        log.info("forward %s:%d -> %s as %s", sock[0], sock[1], fwd.target, src.workload.identity)

    async def open(self, source_ref: str, target: str | Authority) -> Stream:
        """Open a mesh tunnel from a local workload to `target` (for front ends, tools and tests)."""
        src = self.local(source_ref).workload
        tgt = target if isinstance(target, Authority) else parse_authority(target)
        route = self.router.route(self.state.snapshot(), src, tgt)
        return await self.outbound.open_route(src, route)
