"""How a node (the agent, or an application's in-process `hbone.Mesh`) reaches its control plane.

One place for the two steps both need: a gRPC channel to the xDS/CA server for a transport (mTLS with a node
certificate — microxds; server-auth TLS plus a bearer token — istiod; plaintext for loopback), and a Delta ADS
session for the ambient types (Address, Authorization) feeding an `hbone.state.MeshState`.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

from hbone.errors import ConfigError
from hbone.grpc.client import Channel
from hbone.state import MeshState
from hbone.tls import MeshTls
from microxds.client.ads import AdsClient, FailoverOpener, StreamOpener, channel_opener
from microxds.client.ambient import AmbientHandler
from microxds.client.state import DeltaSession, TypeSpec
from microxds.istio.node import NodeProfile
from microxds.resources import ADDRESS, AUTHORIZATION

TRANSPORTS = ("mtls", "tls", "plaintext")


def istiod_identity(node_tls: MeshTls) -> str:
    """istiod's SPIFFE id in our trust domain: the control plane a node trusts by default, as ztunnel does."""
    return f"spiffe://{node_tls.trust_domain}/ns/istio-system/sa/istiod"


def control_plane_channel(
    address: str,
    transport: str,
    profile: NodeProfile,
    *,
    node_tls: MeshTls | None = None,
    identities: tuple[str, ...] = (),
    ca: bool = False,
) -> Channel:
    """A channel to the xDS (or, `ca=True`, CA) server at `address` over `transport`. Over mtls the server must
    present one of `identities`; none given means istiod's (`istiod_identity`), never any workload."""
    if transport == "mtls":
        if node_tls is None:
            raise ConfigError("transport mtls needs certs: a node certificate directory")
        return Channel(address, tls=node_tls, expected_identities=identities or (istiod_identity(node_tls),))
    provider = profile.metadata_provider(ca=ca)
    if transport == "tls":
        return Channel(address, ssl=profile.ssl_context(ca=ca), metadata_provider=provider)
    if transport == "plaintext":
        return Channel(address, metadata_provider=provider)
    raise ConfigError(f"unknown transport {transport!r}: use {', '.join(TRANSPORTS)}")


async def start_ambient_ads(
    channel: Channel | Sequence[Channel],
    profile: NodeProfile,
    handler: AmbientHandler,
    *,
    on_demand: bool = False,
    ready_timeout: float = 30.0,
    address: str = "",
) -> AdsClient:
    """Subscribe to Address + Authorization over Delta and wait for the first complete configuration.

    Several channels are replicas of one control plane: the stream fails over between them, starting at one
    picked by the node id (so nodes spread over the replicas)."""
    types = (TypeSpec(ADDRESS, on_demand=on_demand), TypeSpec(AUTHORIZATION))
    node = profile.node()
    session = DeltaSession(node, types, handler)
    channels = [channel] if isinstance(channel, Channel) else list(channel)
    opener: StreamOpener = channel_opener(channels[0])
    if len(channels) > 1:
        opener = FailoverOpener.of_channels(channels, start=zlib.crc32(node.id.encode()) % len(channels))
    ads = AdsClient(opener, session, name=profile.node_id)
    ads.start()
    try:
        await asyncio.wait_for(ads.ready.wait(), ready_timeout)
    except TimeoutError:
        await ads.stop()
        raise ConfigError(
            f"no xDS configuration from {address or 'the control plane'} within {ready_timeout}s ({ads.last_error})"
        ) from None
    return ads


__all__ = ["TRANSPORTS", "MeshState", "control_plane_channel", "start_ambient_ads"]
