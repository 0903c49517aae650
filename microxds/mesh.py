"""The xDS + Istio CA backed `hbone.ControlPlane`: what `hbone.Mesh` uses to get certificates and mesh state
from microxds or istiod, without a node agent.

    mesh = hbone.Mesh("./bootstrap-certs", control_plane=XdsControlPlane("127.0.0.1:15008"))

`hbone` never imports `microxds` (the dependency points one way), so the control plane is handed to the mesh
rather than found by it. With `transport="mtls"` (microxds) the bootstrap certificate authenticates the app to the
control plane and the CA then signs its workload certificate, renewed at half-life; `transport="tls"` (istiod)
authenticates with a bearer token instead (`NodeProfile`), so no bootstrap certificate is needed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from hbone.errors import ConfigError
from hbone.grpc.client import Channel
from hbone.identity import FileSource, IdentityManager
from hbone.identity.manager import CertificateSource
from hbone.identity.spiffe import SpiffeId
from hbone.state import MeshState
from hbone.tls import MeshTls
from microxds.client.ads import AdsClient
from microxds.client.ambient import AmbientHandler
from microxds.controlplane import control_plane_channel, start_ambient_ads
from microxds.istio.ca import DEFAULT_TTL, IstioCASource
from microxds.istio.node import NodeProfile

__all__ = ["XdsControlPlane"]


class XdsControlPlane:
    """Certificates from the Istio CA API and/or workloads, services and policies over Delta xDS.

    `address` may list replicas (`a:15012,b:15012`): xDS fails over between them, the CA is asked at the first
    unless `ca_address` says otherwise. `certs`: a bootstrap identity for `transport="mtls"`. `xds=False` uses only
    the CA; `ca=False` only xDS (the mesh then uses its own certificates). `identities`: accepted control-plane
    SPIFFE ids (mtls; default istiod's in the bootstrap identity's trust domain, never any workload).
    """

    def __init__(
        self,
        address: str,
        *,
        ca_address: str | None = None,
        transport: str = "mtls",
        certs: str | os.PathLike[str] | None = None,
        identities: tuple[str, ...] = (),
        xds: bool = True,
        ca: bool = True,
        cert_ttl: dt.timedelta = DEFAULT_TTL,
        profile: NodeProfile | None = None,
        on_demand: bool = False,
        ready_timeout: float = 30.0,
        impersonate: bool | None = None,
    ) -> None:
        self.addresses = [a.strip() for a in address.split(",") if a.strip()]
        if not self.addresses:
            raise ConfigError("the control plane address is empty")
        self.address = address
        self.ca_address = ca_address or self.addresses[0]
        self.transport = transport
        self.certs = Path(certs) if certs is not None else None
        self.identities = identities
        self.use_xds = xds
        self.use_ca = ca
        self.cert_ttl = cert_ttl
        self.profile = profile or NodeProfile(token_path=None)
        self.on_demand = on_demand
        self.ready_timeout = ready_timeout
        #: Ask the CA on behalf of another identity (None: when the wanted identity is not the bootstrap one). A
        #: node token, as istiod's tests and ztunnel use, needs True.
        self.impersonate = impersonate
        self._state = MeshState() if xds else None
        self._bootstrap: IdentityManager | None = None
        self._channels: dict[str, Channel] = {}
        self.ads: AdsClient | None = None

    @property
    def state(self) -> MeshState | None:
        return self._state

    def _channel(self, address: str, *, ca: bool) -> Channel:
        ch = self._channels.get(address)
        if ch is None:
            node_tls = MeshTls(self._bootstrap) if self._bootstrap is not None else None
            ch = control_plane_channel(
                address, self.transport, self.profile, node_tls=node_tls, identities=self.identities, ca=ca
            )
            self._channels[address] = ch
        return ch

    async def start(self) -> None:
        """Load the bootstrap identity and wait for the first xDS configuration (one-line `ConfigError`s)."""
        try:
            if self.transport == "mtls":
                if self.certs is None:
                    raise ConfigError("transport mtls needs certs: a bootstrap certificate directory")
                self._bootstrap = IdentityManager(FileSource(self.certs))
                await self._bootstrap.start()
            if self._state is not None:
                channels = [self._channel(a, ca=False) for a in self.addresses]
                handler = AmbientHandler(self._state)
                self.ads = await start_ambient_ads(
                    channels, self.profile, handler,
                    on_demand=self.on_demand, ready_timeout=self.ready_timeout, address=self.address,
                )  # fmt: skip
        except BaseException:
            await self.stop()
            raise

    def certificate_source(self, identity: SpiffeId | None) -> CertificateSource | None:
        """The CA asked for `identity` (default: the bootstrap identity; another one is asked by impersonation)."""
        if not self.use_ca:
            return None
        own = self._bootstrap.identity if self._bootstrap is not None else None
        wanted = identity or own
        if wanted is None:
            raise ConfigError("name the identity to ask the CA for (Mesh(identity='spiffe://…'))")
        impersonate = self.impersonate if self.impersonate is not None else own is not None and wanted != own
        return IstioCASource(
            self._channel(self.ca_address, ca=True), wanted, ttl=self.cert_ttl, impersonate=impersonate
        )

    async def stop(self) -> None:
        """Close the xDS stream, the channels and the bootstrap identity's rotation."""
        if self.ads is not None:
            await self.ads.stop()
            self.ads = None
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        if self._bootstrap is not None:
            await self._bootstrap.stop()
            self._bootstrap = None
