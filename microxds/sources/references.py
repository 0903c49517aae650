"""Cross-references in one configuration: what Envoy NACKs (errors) and what it would wait for or answer 503 (warnings).

Errors, because Envoy rejects the resource:
- an HttpConnectionManager with an inline `route_config` naming a cluster the config lacks (inline routes validate
  their clusters by default; Envoy NACKs the listener: "route: unknown cluster");
- a RouteConfiguration with `validate_clusters: true` naming a missing cluster (Envoy NACKs the RDS update);
- an endpoint without an address (Envoy NACKs the cluster or the ClusterLoadAssignment: "Address must be set").

Warnings, because Envoy accepts them but they do not work yet:
- a listener whose RDS route configuration is missing (the listener stays warming);
- an RDS route or a TCP proxy naming a missing cluster (503 NR / connection closed);
- an EDS cluster without its ClusterLoadAssignment (the cluster stays warming);
- an ambient service that no workload backs (connections to its VIP fail).

`microxds validate --strict` turns the warnings into errors. The listener → route → cluster walk is the one in
`microxds.cache.consistency`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from ..cache.consistency import eds_name, inline_route_configs, listener_refs, route_clusters
from ..errors import ConfigError
from ..resources import ADDRESS, CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from .configsnapshot import ConfigSnapshot

TypeView = Mapping[str, Mapping[str, Resource]]


def check_references(snapshot: ConfigSnapshot) -> tuple[list[ConfigError], list[ConfigError]]:
    """(errors, warnings) over the common view and every node group's view, each located at `file:line`."""
    errors: dict[str, ConfigError] = {}
    warnings: dict[str, ConfigError] = {}
    for group, view in [("", snapshot.resources), *sorted(snapshot.groups.items())]:
        for fatal, type_url, name, text in _problems(view):
            where = snapshot.origin(type_url, name, group or None)
            label = f" (node group {group})" if group else ""
            err = _located(f"{type_url.rsplit('.', 1)[-1]} {name!r}{label}: {text}", where)
            (errors if fatal else warnings).setdefault(str(err).replace(label, ""), err)
    return list(errors.values()), list(warnings.values())


def _located(reason: str, where: str | None) -> ConfigError:
    if where is None:
        return ConfigError(reason)
    file, _, line = where.rpartition(":")
    return ConfigError(reason, file=file or where, line=int(line) if line.isdigit() else None)


def _problems(view: TypeView) -> Iterator[tuple[bool, str, str, str]]:
    """(is_error, type_url, resource name, reason) for one node group's full view."""
    routes = view.get(ROUTE, {})
    clusters = view.get(CLUSTER, {})
    endpoints = view.get(ENDPOINT, {})
    for res in view.get(LISTENER, {}).values():
        listener = listener_pb2.Listener.FromString(res.value)
        inline = {c for rc in inline_route_configs(listener) for c in route_clusters(rc)}
        for kind, ref in listener_refs(listener):
            if kind == ROUTE and ref not in routes:
                yield False, LISTENER, res.name, f"route configuration {ref!r} is missing (the listener stays warming)"
            elif kind == CLUSTER and ref not in clusters:
                if ref in inline:
                    yield True, LISTENER, res.name, f"inline route names unknown cluster {ref!r} (Envoy NACKs it)"
                else:
                    yield False, LISTENER, res.name, f"cluster {ref!r} is missing (connections are closed)"
    for res in routes.values():
        rc = route_pb2.RouteConfiguration.FromString(res.value)
        strict = rc.HasField("validate_clusters") and rc.validate_clusters.value
        for name in route_clusters(rc):
            if name not in clusters:
                if strict:
                    yield True, ROUTE, res.name, f"unknown cluster {name!r} with validate_clusters (Envoy NACKs it)"
                else:
                    yield False, ROUTE, res.name, f"cluster {name!r} is missing (Envoy answers 503)"
    for res in clusters.values():
        eds = eds_name(res)
        if eds is not None and eds not in endpoints:
            yield False, CLUSTER, res.name, f"EDS ClusterLoadAssignment {eds!r} is missing (the cluster stays warming)"
        cluster = cluster_pb2.Cluster.FromString(res.value)
        if cluster.HasField("load_assignment"):
            for text in _addressless(cluster.load_assignment, "load_assignment."):
                yield True, CLUSTER, res.name, text
    for res in endpoints.values():
        for text in _addressless(endpoint_pb2.ClusterLoadAssignment.FromString(res.value), ""):
            yield True, ENDPOINT, res.name, text
    yield from _unbacked_services(view.get(ADDRESS, {}))


def _addressless(cla: endpoint_pb2.ClusterLoadAssignment, prefix: str) -> Iterator[str]:
    for i, locality in enumerate(cla.endpoints):
        for j, lb in enumerate(locality.lb_endpoints):
            if lb.WhichOneof("host_identifier") == "endpoint" and not lb.endpoint.HasField("address"):
                yield f"{prefix}endpoints[{i}].lb_endpoints[{j}].endpoint has no address (Envoy NACKs it)"


def _unbacked_services(addresses: Mapping[str, Resource]) -> Iterator[tuple[bool, str, str, str]]:
    from microxds._pb.istio.workload import workload_pb2

    backed: set[str] = set()
    services: list[tuple[str, str]] = []
    for res in addresses.values():
        addr = workload_pb2.Address.FromString(res.value)
        kind = addr.WhichOneof("type")
        if kind == "workload":
            backed.update(addr.workload.services.keys())
        elif kind == "service":
            services.append((res.name, f"{addr.service.namespace}/{addr.service.hostname}"))
    for name, key in services:
        if key not in backed:
            yield False, ADDRESS, name, f"service {key} has no workloads (connections to it fail)"
