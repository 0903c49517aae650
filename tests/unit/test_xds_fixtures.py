"""Shared builders and fakes for the microxds cache/server tests (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2

from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

T = TypeVar("T")


def listener(name: str, route: str = "", *, port: int = 0) -> Resource:
    msg = listener_pb2.Listener(name=name)
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route or f"{name}-route"
    hcm.rds.config_source.ads.SetInParent()
    msg.api_listener.api_listener.Pack(hcm)
    if port:
        msg.address.socket_address.port_value = port
    return Resource.of(msg)


def route(name: str, *clusters: str) -> Resource:
    msg = route_pb2.RouteConfiguration(name=name)
    vh = msg.virtual_hosts.add(name="vh", domains=["*"])
    for c in clusters:
        r = vh.routes.add()
        r.match.prefix = f"/{c}"
        r.route.cluster = c
    return Resource.of(msg)


def cluster(name: str, *, service: str = "", lb: int = 0) -> Resource:
    msg = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, lb_policy=lb)
    msg.eds_cluster_config.eds_config.ads.SetInParent()
    if service:
        msg.eds_cluster_config.service_name = service
    return Resource.of(msg)


def cla(name: str, port: int = 80, *, aliases: tuple[str, ...] = ()) -> Resource:
    msg = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = msg.endpoints.add()
    ep.locality.zone = "z1"
    ep.load_balancing_weight.value = 1
    lb = ep.lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "10.0.0.1"
    lb.endpoint.address.socket_address.port_value = port
    return Resource.of(msg, aliases=aliases)


def node(node_id: str = "n1", cluster_name: str = "c") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=cluster_name)


def req(
    type_url: str,
    names: list[str] | tuple[str, ...] = (),
    *,
    nonce: str = "",
    version: str = "",
    nack: str | None = None,
    with_node: base_pb2.Node | None = None,
) -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if with_node is not None:
        r.node.CopyFrom(with_node)
    if nack is not None:
        r.error_detail.code = 3
        r.error_detail.message = nack
    return r


def dreq(
    type_url: str,
    subscribe: list[str] | tuple[str, ...] = (),
    unsubscribe: list[str] | tuple[str, ...] = (),
    *,
    nonce: str = "",
    nack: str | None = None,
    initial: dict[str, str] | None = None,
    with_node: base_pb2.Node | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if with_node is not None:
        r.node.CopyFrom(with_node)
    if nack is not None:
        r.error_detail.code = 3
        r.error_detail.message = nack
    return r


def names_of(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    """Resource names in a SotW response (decoding each Any by its type)."""
    out = []
    for a in resp.resources:
        if a.type_url == ENDPOINT:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(a.value).cluster_name)
        else:
            msg = {
                LISTENER: listener_pb2.Listener,
                ROUTE: route_pb2.RouteConfiguration,
                CLUSTER: cluster_pb2.Cluster,
            }[a.type_url].FromString(a.value)
            out.append(msg.name)
    return out


class FakeStream(Generic[T]):
    """An asyncio queue pair standing in for a gRPC stream: `put()` requests, `get()` responses."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[object] = asyncio.Queue()
        self.responses: asyncio.Queue[object] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[T]:  # type: ignore[misc]
        while True:
            item = await self.requests.get()
            if item is None:
                return
            yield item  # type: ignore[misc]

    def put(self, request: object) -> None:
        self.requests.put_nowait(request)

    def end(self) -> None:
        self.requests.put_nowait(None)

    async def send(self, response: object) -> None:
        self.responses.put_nowait(response)

    async def get(self) -> object:
        async with asyncio.timeout(2.0):
            return await self.responses.get()

    def drain(self) -> list[object]:
        out = []
        while not self.responses.empty():
            out.append(self.responses.get_nowait())
        return out
