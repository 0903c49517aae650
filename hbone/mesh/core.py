"""`Mesh`: one application's identity, tunnels and listeners, in process — no sidecar.

    certificates (files, a CA)  ──► IdentityManager (rotation) ──► MeshTls ──► HboneClient (pool) / HboneServer
    control plane (optional)    ──► MeshState (Address + Authorization) ──► Router (the agent's outbound logic)

`hbone` never imports `microxds`: a control plane is anything shaped like `ControlPlane` (below); the xDS + Istio
CA implementation is `microxds.mesh.XdsControlPlane`, which works against `microxds serve` and istiod alike.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from hbone.authz.defaults import DefaultMode, default_policies
from hbone.authz.model import Policy
from hbone.client import Endpoint, HboneClient
from hbone.errors import ConfigError
from hbone.identity.manager import CertificateSource, FileSource, IdentityManager
from hbone.identity.spiffe import SpiffeId
from hbone.mesh.streams import TunnelPeer, TunnelReader, TunnelStream, TunnelWriter
from hbone.proxy.inbound import Authorizer, policy_authorizer
from hbone.proxy.outbound import NoRoute, OutboundProxy, RouteKind, Router
from hbone.state.model import Workload
from hbone.state.snapshot import MeshSnapshot
from hbone.state.store import MeshState
from hbone.tls import MeshTls, peer_identity
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.baggage import PeerMetadata

if TYPE_CHECKING:
    from hbone.grpc.client import Channel
    from hbone.mesh.serving import MeshServer, TunnelHandler
    from hbone.mesh.transport import MeshTransport

__all__ = ["ControlPlane", "Mesh"]


class ControlPlane(Protocol):
    """A source of certificates and/or mesh state for `Mesh` (e.g. `microxds.mesh.XdsControlPlane`)."""

    async def start(self) -> None:
        """Connect; return once the first configuration arrived (or raise a one-line `HboneError`)."""

    async def stop(self) -> None: ...

    def certificate_source(self, identity: SpiffeId | None) -> CertificateSource | None:
        """A CA-backed source of certificates for `identity` (None: the control plane's own choice), or None when
        this control plane has no CA and the mesh's own certificates are used."""

    @property
    def state(self) -> MeshState | None:
        """Workloads, services and policies from xDS, or None without xDS."""


class Mesh:
    """An application's place in the mesh: `async with Mesh(...) as mesh:` then `open_connection`, `serve`,
    `serve_asgi`, `httpx_transport`, `grpc_channel`.

    `certificates`: a directory (Istio or SPIFFE layout, reloaded when replaced) or any `CertificateSource`; with
    a `control_plane` that has a CA it may be omitted. `identity` picks the identity asked of the CA.
    `workload` (`namespace/name` or a uid) names this app's workload in xDS, for locality-aware endpoint picks.
    `authorization` is what `serve` enforces by default: `"same-namespace"` (default without xDS), `"allow-all"`,
    `"xds"` (the control plane's policies, Istio semantics; default with xDS) or a list of `Policy`.
    """

    def __init__(
        self,
        certificates: CertificateSource | str | os.PathLike[str] | None = None,
        *,
        control_plane: ControlPlane | None = None,
        identity: str | SpiffeId | None = None,
        workload: str | None = None,
        authorization: str | Sequence[Policy] | None = None,
        network: str = "",
        hbone_port: int = 15008,
        connect_timeout: float = 10.0,
    ) -> None:
        if isinstance(certificates, str | os.PathLike):
            certificates = FileSource(certificates)
        self._certificates = certificates
        self._control_plane = control_plane
        self._wanted = SpiffeId.parse(identity) if isinstance(identity, str) else identity
        self._workload_ref = workload
        self._authorization = authorization
        self.network = network
        self.hbone_port = hbone_port
        self._connect_timeout = connect_timeout
        self._manager: IdentityManager | None = None
        self._tls: MeshTls | None = None
        self._client: HboneClient | None = None
        self._outbound: OutboundProxy | None = None
        self._metadata: PeerMetadata | None = None
        self._servers: list[MeshServer] = []
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the first certificate (and xDS state); errors are `HboneError`s with one-line messages."""
        if self._started:
            return
        cp = self._control_plane
        if cp is not None:
            await cp.start()
        source = cp.certificate_source(self._wanted) if cp is not None else None
        source = source or self._certificates
        if source is None:
            raise ConfigError("Mesh needs certificates: a directory, a CertificateSource, or a control plane with a CA")
        try:
            self._manager = IdentityManager(source)
            await self._manager.start()
            self._tls = MeshTls(self._manager)
            me = self._self_workload()
            self._metadata = me.peer_metadata() if me is not None else None
            self._client = HboneClient(self._tls, metadata=self._metadata, connect_timeout=self._connect_timeout)
            state = cp.state if cp is not None else None
            if state is not None:
                router = Router(network=self.network, hbone_port=self.hbone_port)
                self._outbound = OutboundProxy(router, state.snapshot, self._client_for, network=self.network)
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def close(self) -> None:
        """Close listeners, pooled connections, rotation and the control plane connection."""
        self._started = False
        for server in self._servers:
            await server.close()
        self._servers.clear()
        if self._client is not None:
            await self._client.close()
        if self._manager is not None:
            await self._manager.stop()
        if self._control_plane is not None:
            await self._control_plane.stop()

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- identity ---------------------------------------------------------------------------------------------

    @property
    def identity(self) -> SpiffeId | None:
        """This application's SPIFFE id (from its current certificate)."""
        return self._need_manager().identity

    @property
    def identity_manager(self) -> IdentityManager:
        """The certificate holder (rotation count, `on_rotate` listeners, `refresh_now`)."""
        return self._need_manager()

    @property
    def tls(self) -> MeshTls:
        """TLS contexts following rotation (for servers or clients of your own)."""
        if self._tls is None:
            raise ConfigError("the mesh is not started: use `async with Mesh(...)` or `await mesh.start()`")
        return self._tls

    @property
    def state(self) -> MeshState | None:
        """Mesh state from xDS (None without a control plane that provides it)."""
        return self._control_plane.state if self._control_plane is not None else None

    def _need_manager(self) -> IdentityManager:
        if self._manager is None:
            raise ConfigError("the mesh is not started: use `async with Mesh(...)` or `await mesh.start()`")
        return self._manager

    def _need_client(self) -> HboneClient:
        if self._client is None:
            raise ConfigError("the mesh is not started: use `async with Mesh(...)` or `await mesh.start()`")
        return self._client

    def _client_for(self, _source: Workload | None) -> HboneClient:
        return self._need_client()

    def _self_workload(self) -> Workload | None:
        state = self.state
        if state is None or self._workload_ref is None:
            return None
        snap = state.snapshot()
        found = snap.workload(self._workload_ref)
        if found is not None:
            return found
        ns, _, name = self._workload_ref.rpartition("/")
        return next((w for w in snap.workloads_in_namespace(ns or "default") if w.name == name), None)

    # -- client -----------------------------------------------------------------------------------------------

    async def open_tunnel(
        self, target: str, *, via: str | None = None, identities: Sequence[str | SpiffeId] = ()
    ) -> tuple[TunnelStream, TunnelPeer]:
        """Open one tunnel to `target` (host:port or ip:port); the carrier and who terminated it.

        With `via` (host:port of an HBONE server) the tunnel goes there, expecting one of `identities` (required:
        the server's SPIFFE ids). Without it, xDS state routes it like the node agent does (service VIP or
        hostname → endpoint, waypoint or network gateway, with the identities xDS names); without xDS an IP target
        is reached at its own HBONE port, again expecting `identities`. Refusals raise `ConnectRefused` (with the
        server's status, e.g. 401).
        """
        client = self._need_client()
        authority = parse_authority(target)
        if via is not None or self._outbound is None:
            endpoint = self._static_endpoint(authority, via, identities)
            tunnel = await client.open(authority, endpoint)
            carrier = cast(TunnelStream, tunnel.h2 if tunnel.stream is tunnel.h2 else tunnel.stream)
            return carrier, TunnelPeer(tunnel.peer_identity, (endpoint.host, endpoint.port), str(authority))
        source = self._self_workload()
        snap = self._outbound.snapshot()
        authority = self._resolve_name(snap, source, authority)
        route = self._outbound.router.route(snap, source, authority)
        if route.kind is RouteKind.PASSTHROUGH or route.hop is None:
            raise NoRoute(
                f"{target} is not an HBONE destination in the mesh; pass via=HOST:PORT to tunnel there explicitly"
            )
        stream = await self._outbound.open_route(source, route)
        ident = peer_identity(stream.connection.ssl_object)
        return stream, TunnelPeer(ident, (route.hop.host, route.hop.port), str(route.authority))

    def _resolve_name(self, snap: MeshSnapshot, source: Workload | None, authority: Authority) -> Authority:
        """A service hostname becomes its VIP on our network, as ztunnel's DNS proxy answers an application: the
        tunnel then carries VIP:port (what waypoints match on), exactly as for an app that resolved the name."""
        if authority.ip is not None:
            return authority
        svc = snap.service_by_host(authority.host, source.namespace if source else None)
        vip = next((a.address for a in svc.addresses if a.network == self.network), None) if svc else None
        return Authority.from_parts(vip, authority.port) if vip is not None else authority

    def _static_endpoint(self, authority: Authority, via: str | None, identities: Sequence[str | SpiffeId]) -> Endpoint:
        if via is None and authority.ip is None:
            raise NoRoute(f"cannot resolve {authority.host} without a control plane: pass via=HOST:PORT")
        if not identities:
            # Without xDS nothing says who should answer; "any identity of the mesh" would let any workload that
            # can take the address stand in for the destination (the CLIs' --expect-identity rule).
            raise ConfigError(f"tunnel to {authority}: pass identities=[...], the HBONE server's expected SPIFFE ids")
        if via is not None:
            return Endpoint.parse(via, identities=identities)
        return Endpoint(str(authority.ip), self.hbone_port, tuple(str(i) for i in identities))

    async def open_connection(
        self,
        target: str,
        *,
        via: str | None = None,
        identities: Sequence[str | SpiffeId] = (),
        limit: int = 2**16,
    ) -> tuple[TunnelReader, TunnelWriter]:
        """Like `asyncio.open_connection`, through an mTLS HBONE tunnel: `reader, writer = await
        mesh.open_connection("reviews.default.svc.cluster.local:9080")`. See `open_tunnel` for routing;
        `writer.get_extra_info("peer_identity")` is the verified identity of the HBONE server."""
        carrier, peer = await self.open_tunnel(target, via=via, identities=identities)
        return TunnelReader(carrier, limit=limit), TunnelWriter(carrier, peer)

    def httpx_transport(
        self,
        *,
        http1: bool = True,
        http2: bool = False,
        via: str | None = None,
        identities: Sequence[str | SpiffeId] = (),
        **pool_options: Any,
    ) -> MeshTransport:
        """An `httpx.AsyncBaseTransport` whose connections are HBONE tunnels (needs the `httpx` extra).

        `http2=True, http1=False` speaks HTTP/2 with prior knowledge inside each tunnel (the tunnel is already
        mTLS); `https://` URLs add TLS inside the tunnel. Other keywords go to `httpcore.AsyncConnectionPool`."""
        from hbone.mesh.transport import MeshTransport

        return MeshTransport(self, http1=http1, http2=http2, via=via, identities=identities, **pool_options)

    def grpc_channel(
        self, target: str, *, via: str | None = None, identities: Sequence[str | SpiffeId] = (), **options: Any
    ) -> Channel:
        """Our gRPC `Channel` to `target` (host:port), its HTTP/2 connection carried in one HBONE tunnel."""
        from hbone.grpc.client import Channel

        async def tunnel() -> Any:
            carrier, _ = await self.open_tunnel(target, via=via, identities=identities)
            return carrier

        return Channel(target, tunnel=tunnel, **options)

    # -- server -----------------------------------------------------------------------------------------------

    def _choice(self, authorization: str | Sequence[Policy] | None) -> str | Sequence[Policy]:
        choice = authorization if authorization is not None else self._authorization
        if choice is None:
            choice = "xds" if self.state is not None else DefaultMode.SAME_NAMESPACE.value
        return choice

    def authorizer(self, authorization: str | Sequence[Policy] | None = None) -> Authorizer:
        """The decision function `serve` enforces (see the class docstring for the choices)."""
        choice = self._choice(authorization)
        state = self.state
        if not isinstance(choice, str):
            return policy_authorizer(tuple(choice))
        if choice == "xds":
            if state is None:
                raise ConfigError("authorization 'xds' needs a control plane that provides mesh state")
            return lambda conn: state.snapshot().authorize(conn)
        ident = self.identity
        if ident is None:
            raise ConfigError("our certificate carries no SPIFFE id to derive default authorization from")
        return policy_authorizer(default_policies(DefaultMode.parse(choice), ident))

    async def serve(
        self,
        handler: TunnelHandler,
        *,
        host: str = "0.0.0.0",
        port: int = 15008,
        authorization: str | Sequence[Policy] | None = None,
    ) -> MeshServer:
        """Accept HBONE on host:port with this identity; each admitted tunnel runs `await handler(reader, writer)`
        (asyncio.start_server style; `writer.peer.identity` is the caller's verified SPIFFE id). Refused tunnels
        get ztunnel's statuses (401 denied, 400 malformed, 503 our own port)."""
        from hbone.mesh.serving import MeshServer

        tls = self.tls
        ident = self.identity
        namespace = (ident.namespace or "") if ident else ""
        follow = self.state if self._choice(authorization) == "xds" else None
        server = MeshServer(
            tls, handler, self.authorizer(authorization), namespace=namespace, state=follow, metadata=self._metadata
        )
        await server.listen(host, port)
        self._servers.append(server)
        return server

    async def serve_asgi(
        self,
        app: Any,
        *,
        host: str = "0.0.0.0",
        port: int = 15008,
        authorization: str | Sequence[Policy] | None = None,
        **config: Any,
    ) -> MeshServer:
        """Serve an ASGI app (Starlette, FastAPI, a bare callable) over HBONE with hypercorn's HTTP/1.1 + HTTP/2
        protocol layer (needs the `asgi` extra). The caller is in `scope["extensions"]["hbone"]`. Keywords set
        `hypercorn.config.Config` attributes (e.g. `keep_alive_timeout`)."""
        from hbone.mesh.asgi import AsgiHandler

        handler = AsgiHandler(app, **config)
        await handler.startup()
        try:
            server = await self.serve(handler, host=host, port=port, authorization=authorization)
        except BaseException:
            with contextlib.suppress(Exception):
                await handler.shutdown()
            raise
        server.on_close(handler.shutdown)
        return server
