"""Reference checks across types: listener -> route -> cluster -> endpoints.

go-control-plane `Snapshot.Consistent()` and java-control-plane `ensureConsistent()` reject a snapshot with dangling
references; we only report them, because a partial config is often what an operator wants served while the rest is
being fixed (and an on-demand source may fill the gap). Resources are parsed here only, never on the push path,
except `eds_name()` which is memoised per resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

_HCM = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TCP = "type.googleapis.com/" + tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name


@dataclass(frozen=True, slots=True)
class Problem:
    """`source_type` `source` references `missing_type` `missing`, which the snapshot lacks."""

    source_type: str
    source: str
    missing_type: str
    missing: str

    def __str__(self) -> str:
        src, dst = _short(self.source_type), _short(self.missing_type)
        return f"{src} {self.source!r} references missing {dst} {self.missing!r}"


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def find_problems(snapshot: Mapping[str, Mapping[str, Resource]]) -> list[Problem]:
    listeners = snapshot.get(LISTENER, {})
    routes = snapshot.get(ROUTE, {})
    clusters = snapshot.get(CLUSTER, {})
    endpoints = snapshot.get(ENDPOINT, {})
    problems: list[Problem] = []
    for res in listeners.values():
        listener = listener_pb2.Listener.FromString(res.value)
        for kind, ref in listener_refs(listener):
            present = routes if kind == ROUTE else clusters
            if ref not in present:
                problems.append(Problem(LISTENER, res.name, kind, ref))
    for res in routes.values():
        route_config = route_pb2.RouteConfiguration.FromString(res.value)
        missing = [c for c in route_clusters(route_config) if c not in clusters]
        problems.extend(Problem(ROUTE, res.name, CLUSTER, c) for c in missing)
    for res in clusters.values():
        eds = eds_name(res)
        if eds is not None and eds not in endpoints:
            problems.append(Problem(CLUSTER, res.name, ENDPOINT, eds))
    return problems


def _typed_filters(listener: listener_pb2.Listener) -> list[any_pb2.Any]:
    typed: list[any_pb2.Any] = []
    if listener.HasField("api_listener"):
        typed.append(listener.api_listener.api_listener)
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    typed.extend(f.typed_config for chain in chains for f in chain.filters if f.HasField("typed_config"))
    return typed


def inline_route_configs(listener: listener_pb2.Listener) -> Iterator[route_pb2.RouteConfiguration]:
    """The route configurations carried inline in the listener's HttpConnectionManagers."""
    for packed in _typed_filters(listener):
        if packed.type_url == _HCM:
            hcm = hcm_pb2.HttpConnectionManager.FromString(packed.value)
            if hcm.HasField("route_config"):
                yield hcm.route_config


def listener_refs(listener: listener_pb2.Listener) -> Iterator[tuple[str, str]]:
    """(ROUTE, name) for each RDS reference, (CLUSTER, name) for inline routes and TCP proxies."""
    for packed in _typed_filters(listener):
        if packed.type_url == _HCM:
            hcm = hcm_pb2.HttpConnectionManager.FromString(packed.value)
            if hcm.HasField("rds"):
                yield ROUTE, hcm.rds.route_config_name
            elif hcm.HasField("route_config"):
                yield from ((CLUSTER, c) for c in route_clusters(hcm.route_config))
        elif packed.type_url == _TCP:
            tcp = tcp_proxy_pb2.TcpProxy.FromString(packed.value)
            if tcp.cluster:
                yield CLUSTER, tcp.cluster
            yield from ((CLUSTER, w.name) for w in tcp.weighted_clusters.clusters)


def route_clusters(route_config: route_pb2.RouteConfiguration) -> Iterable[str]:
    seen: dict[str, None] = {}
    for vhost in route_config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action: route_components_pb2.RouteAction = route.route
            if action.cluster:
                seen[action.cluster] = None
            for weighted in action.weighted_clusters.clusters:
                seen[weighted.name] = None
    return seen.keys()


@lru_cache(maxsize=8192)
def eds_name(res: Resource) -> str | None:
    """The ClusterLoadAssignment name an EDS cluster asks for (`service_name`, else the cluster name); None if
    the cluster is not of type EDS. Memoised: resources are immutable, and SotW calls this after CDS pushes."""
    cluster = cluster_pb2.Cluster.FromString(res.value)
    if cluster.WhichOneof("cluster_discovery_type") != "type" or cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)
