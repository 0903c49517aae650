"""Service endpoints: target-port resolution, health filter, locality preference, round-robin picking.

Pure functions over domain values; `MeshSnapshot` wires them to its indexes. Semantics follow ztunnel's upstream
selection: a Service port's `target_port` 0 is a named port resolved per endpoint through `Workload.services`
(docs/istio.md §2); `LoadBalancing.routing_preference` ranks endpoints by how many leading scopes match the
client (FAILOVER: best rank first; STRICT: only endpoints matching every scope); `health_policy` ONLY_HEALTHY (the
default) drops unhealthy endpoints.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hbone.authz.model import IPAddress
from hbone.state.model import HealthPolicy, LbMode, LbScope, LoadBalancing, Service, Workload

# What `hbone serve` may use without xDS: prefer the same network, then region, zone, subzone.
DEFAULT_ROUTING_PREFERENCE = (LbScope.NETWORK, LbScope.REGION, LbScope.ZONE, LbScope.SUBZONE)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream for a service port: the workload and the resolved target port."""

    workload: Workload
    port: int
    rank: int = 0  # locality rank against the client (higher is closer); 0 without routing preferences

    @property
    def address(self) -> IPAddress | None:
        return self.workload.addresses[0] if self.workload.addresses else None


def resolve_target_port(service: Service, service_port: int, workload: Workload) -> int | None:
    """The port to dial on `workload` for `service`:`service_port`; None when the service has no such port or
    a named port (target 0) is not mapped by this workload. The endpoint's own mapping wins, as in ztunnel."""
    port = service.port(service_port)
    if port is None:
        return None
    for p in workload.services.get(service.key, ()):
        if p.service_port == service_port and p.target_port:
            return p.target_port
    return port.target_port or None


def _scope_matches(scope: LbScope, src: Workload, dst: Workload) -> bool:
    if scope is LbScope.REGION:
        return src.locality.region == dst.locality.region
    if scope is LbScope.ZONE:
        return src.locality.zone == dst.locality.zone
    if scope is LbScope.SUBZONE:
        return src.locality.subzone == dst.locality.subzone
    if scope is LbScope.NODE:
        return src.node == dst.node
    if scope is LbScope.CLUSTER:
        return src.cluster_id == dst.cluster_id
    if scope is LbScope.NETWORK:
        return src.network == dst.network
    return True  # UNSPECIFIED_SCOPE constrains nothing


def locality_rank(source: Workload, dest: Workload, preference: Sequence[LbScope], *, strict: bool) -> int | None:
    """How many leading scopes of `preference` match; None when `strict` and any scope differs."""
    rank = 0
    for scope in preference:
        if _scope_matches(scope, source, dest):
            rank += 1
        elif strict:
            return None
        else:
            break
    return rank


def service_endpoints(
    service: Service,
    service_port: int,
    workloads: Iterable[Workload],
    *,
    source: Workload | None = None,
    healthy_only: bool | None = None,
    routing_preference: Sequence[LbScope] | None = None,
) -> tuple[Endpoint, ...]:
    """Endpoints of `service`:`service_port` among `workloads`, closest first (stable within a rank).

    `healthy_only` defaults from the service's health policy; `routing_preference` from its load balancing
    (empty: no locality ordering, as in Istio). Ranking needs the client `source` workload.
    """
    lb = service.load_balancing or LoadBalancing()
    if healthy_only is None:
        healthy_only = lb.health_policy is HealthPolicy.ONLY_HEALTHY
    prefs = tuple(lb.routing_preference) if routing_preference is None else tuple(routing_preference)
    strict = lb.mode is LbMode.STRICT
    out: list[Endpoint] = []
    for w in workloads:
        if healthy_only and not w.healthy:
            continue
        port = resolve_target_port(service, service_port, w)
        if port is None:
            continue
        rank = 0
        if source is not None and prefs:
            r = locality_rank(source, w, prefs, strict=strict)
            if r is None:
                continue
            rank = r
        out.append(Endpoint(w, port, rank))
    out.sort(key=lambda e: -e.rank)
    return tuple(out)


def best_tier(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """The endpoints sharing the best rank (input ordered as `service_endpoints` returns it)."""
    if not endpoints:
        return ()
    top = endpoints[0].rank
    return tuple(e for e in endpoints if e.rank == top)


class RoundRobin:
    """Round-robin over the closest tier, one rotation per key (e.g. "ns/host:port"). Thread-safe."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def pick(self, key: str, endpoints: Sequence[Endpoint]) -> Endpoint | None:
        tier = best_tier(endpoints)
        if not tier:
            return None
        with self._lock:
            counter = self._counters.setdefault(key, itertools.count())
            n = next(counter)
        return tier[n % len(tier)]

    def forget(self, key: str) -> None:
        with self._lock:
            self._counters.pop(key, None)
