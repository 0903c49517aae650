"""Immutable mesh snapshots and their indexes, plus the lookups the proxy needs.

A `MeshSnapshot` is never mutated after it is published: updates build new index dicts copy-on-write (only the kinds
that changed are copied, and each index entry touched by a batch is rebuilt once, so a 10k-item batch stays linear).
Index values are tuples/frozensets, so a shallow dict copy is a full copy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from hbone.authz.engine import Decision, PolicyIndex, evaluate
from hbone.authz.model import Connection, IPAddress, Policy
from hbone.state.endpoints import Endpoint, service_endpoints
from hbone.state.model import LbScope, Service, Workload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
AddressKey = tuple[str, IPAddress]  # (network, ip)


def _ip(value: IPAddress | str) -> IPAddress:
    return value if not isinstance(value, str) else ipaddress.ip_address(value)


@dataclass(frozen=True, slots=True)
class KindChange:
    upserted: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    @property
    def keys(self) -> frozenset[str]:
        return self.upserted | self.removed

    def __bool__(self) -> bool:
        return bool(self.upserted or self.removed)


class _MultiIndex(Generic[K]):
    """Batched edits of a `key → frozenset[str]` index: each touched key is rebuilt once."""

    def __init__(self, base: Mapping[K, frozenset[str]]) -> None:
        self._base = base
        self._adds: dict[K, set[str]] = {}
        self._dels: dict[K, set[str]] = {}

    def edit(self, key: K, item: str, *, add: bool) -> None:
        """Add or remove `item` under `key`; the last edit of a (key, item) pair wins."""
        into, other = (self._adds, self._dels) if add else (self._dels, self._adds)
        into.setdefault(key, set()).add(item)
        other.get(key, set()).discard(item)

    def build(self) -> dict[K, frozenset[str]]:
        out = dict(self._base)
        for key in self._adds.keys() | self._dels.keys():
            members = (set(out.get(key, ())) - self._dels.get(key, set())) | self._adds.get(key, set())
            if members:
                out[key] = frozenset(members)
            else:
                out.pop(key, None)
        return out


def _diff(old: Mapping[str, V], new: Mapping[str, V], touched: Iterable[str]) -> KindChange:
    up: set[str] = set()
    gone: set[str] = set()
    for k in touched:
        before, after = old.get(k), new.get(k)
        if before is after or before == after:
            continue
        (gone if after is None else up).add(k)
    return KindChange(frozenset(up), frozenset(gone))


def _apply_items(
    base: Mapping[str, V], upserts: Sequence[V], removals: Sequence[str], key: Callable[[V], str]
) -> tuple[dict[str, V], set[str]]:
    items, touched = dict(base), set(removals)
    for k in removals:
        items.pop(k, None)
    for item in upserts:
        k = key(item)
        touched.add(k)
        items[k] = item
    return items, touched


@dataclass(frozen=True, slots=True)
class SnapshotIndexes:
    workloads: Mapping[str, Workload]
    workloads_by_address: Mapping[AddressKey, frozenset[str]]
    workloads_by_namespace: Mapping[str, frozenset[str]]
    services: Mapping[str, Service]
    services_by_host: Mapping[str, frozenset[str]]
    services_by_vip: Mapping[AddressKey, frozenset[str]]
    services_by_namespace: Mapping[str, frozenset[str]]
    endpoints: Mapping[str, frozenset[str]]  # service key → workload uids

    @classmethod
    def empty(cls) -> SnapshotIndexes:
        return cls({}, {}, {}, {}, {}, {}, {}, {})

    def updated(
        self, policies: PolicyIndex, delta: _DeltaLike
    ) -> tuple[SnapshotIndexes, PolicyIndex, tuple[KindChange, KindChange, KindChange]]:
        """New indexes for `delta` (already validated): removals first, then upserts."""
        w_items, w_touched = _apply_items(self.workloads, delta.workloads, delta.removed_workloads, lambda w: w.uid)
        w_change = _diff(self.workloads, w_items, w_touched)
        s_items, s_touched = _apply_items(self.services, delta.services, delta.removed_services, lambda s: s.key)
        s_change = _diff(self.services, s_items, s_touched)
        p_old = policies.policies
        p_items, p_touched = _apply_items(p_old, delta.policies, delta.removed_policies, lambda p: p.key)
        p_change = _diff(p_old, p_items, p_touched)

        idx = self
        if w_change:
            by_addr = _MultiIndex(self.workloads_by_address)
            by_ns = _MultiIndex(self.workloads_by_namespace)
            eps = _MultiIndex(self.endpoints)
            for uid in w_change.keys:
                for w, add in ((self.workloads.get(uid), False), (w_items.get(uid), True)):
                    if w is not None:
                        by_ns.edit(w.namespace, uid, add=add)
                        for a in w.addresses:
                            by_addr.edit((w.network, a), uid, add=add)
                        for svc in w.services:
                            eps.edit(svc, uid, add=add)
            idx = replace(
                idx,
                workloads=w_items,
                workloads_by_address=by_addr.build(),
                workloads_by_namespace=by_ns.build(),
                endpoints=eps.build(),
            )
        if s_change:
            by_host = _MultiIndex(self.services_by_host)
            by_vip = _MultiIndex(self.services_by_vip)
            by_sns = _MultiIndex(self.services_by_namespace)
            for key in s_change.keys:
                for s, add in ((self.services.get(key), False), (s_items.get(key), True)):
                    if s is not None:
                        by_host.edit(s.hostname, key, add=add)
                        by_sns.edit(s.namespace, key, add=add)
                        for na in s.addresses:
                            by_vip.edit((na.network, na.address), key, add=add)
            idx = replace(
                idx,
                services=s_items,
                services_by_host=by_host.build(),
                services_by_vip=by_vip.build(),
                services_by_namespace=by_sns.build(),
            )
        if p_change:
            policies = policies.with_changes(delta.policies, delta.removed_policies)
        return idx, policies, (w_change, s_change, p_change)


class _DeltaLike(Protocol):
    """The fields of `store.StateDelta` that `updated` reads (a Protocol avoids an import cycle)."""

    @property
    def workloads(self) -> Sequence[Workload]: ...
    @property
    def services(self) -> Sequence[Service]: ...
    @property
    def policies(self) -> Sequence[Policy]: ...
    @property
    def removed_workloads(self) -> Sequence[str]: ...
    @property
    def removed_services(self) -> Sequence[str]: ...
    @property
    def removed_policies(self) -> Sequence[str]: ...


class MeshSnapshot:
    """A read-only, internally consistent view of the mesh at one generation."""

    __slots__ = ("generation", "indexes", "policy_index")

    def __init__(self, generation: int, indexes: SnapshotIndexes, policy_index: PolicyIndex) -> None:
        self.generation = generation
        self.indexes = indexes
        self.policy_index = policy_index

    # --- whole collections (read-only views) ---
    @property
    def workloads(self) -> Mapping[str, Workload]:
        return MappingProxyType(self.indexes.workloads)

    @property
    def services(self) -> Mapping[str, Service]:
        return MappingProxyType(self.indexes.services)

    @property
    def policies(self) -> Mapping[str, Policy]:
        return MappingProxyType(self.policy_index.policies)

    # --- workloads ---
    def workload(self, uid: str) -> Workload | None:
        return self.indexes.workloads.get(uid)

    def workloads_by_address(self, ip: IPAddress | str, network: str = "") -> tuple[Workload, ...]:
        uids = self.indexes.workloads_by_address.get((network, _ip(ip)), frozenset())
        return tuple(self.indexes.workloads[u] for u in sorted(uids))

    def workload_by_address(self, ip: IPAddress | str, network: str = "") -> Workload | None:
        """The workload at `network`/`ip`; when several share it (host network), a standard-network one first."""
        found = self.workloads_by_address(ip, network)
        return min(found, key=lambda w: w.network_mode) if found else None

    def workloads_in_namespace(self, namespace: str) -> tuple[Workload, ...]:
        uids = self.indexes.workloads_by_namespace.get(namespace, frozenset())
        return tuple(self.indexes.workloads[u] for u in sorted(uids))

    # --- services ---
    def service(self, key: str) -> Service | None:
        """By resource name `ns/hostname`."""
        return self.indexes.services.get(key)

    def service_by_host(self, host: str, namespace: str | None = None) -> Service | None:
        """By `ns/hostname` or bare hostname; with several namespaces, prefer `namespace`, else the first key."""
        if "/" in host:
            return self.service(host)
        keys = sorted(self.indexes.services_by_host.get(host, frozenset()))
        if not keys:
            return None
        if namespace is not None and f"{namespace}/{host}" in keys:
            return self.indexes.services[f"{namespace}/{host}"]
        return self.indexes.services[keys[0]]

    def services_by_vip(self, ip: IPAddress | str, network: str = "") -> tuple[Service, ...]:
        keys = self.indexes.services_by_vip.get((network, _ip(ip)), frozenset())
        return tuple(self.indexes.services[k] for k in sorted(keys))

    def service_by_vip(self, ip: IPAddress | str, port: int | None = None, network: str = "") -> Service | None:
        """The service owning VIP `ip` (and, if given, exposing `port`)."""
        for s in self.services_by_vip(ip, network):
            if port is None or s.port(port) is not None:
                return s
        return None

    def services_in_namespace(self, namespace: str) -> tuple[Service, ...]:
        keys = self.indexes.services_by_namespace.get(namespace, frozenset())
        return tuple(self.indexes.services[k] for k in sorted(keys))

    def services_of_workload(self, workload: Workload) -> tuple[Service, ...]:
        return tuple(s for k in workload.services if (s := self.indexes.services.get(k)) is not None)

    def endpoint_workloads(self, service: Service | str) -> tuple[Workload, ...]:
        key = service if isinstance(service, str) else service.key
        uids = self.indexes.endpoints.get(key, frozenset())
        return tuple(self.indexes.workloads[u] for u in sorted(uids))

    def endpoints(
        self,
        service: Service | str,
        service_port: int,
        *,
        source: Workload | None = None,
        healthy_only: bool | None = None,
        routing_preference: Sequence[LbScope] | None = None,
    ) -> tuple[Endpoint, ...]:
        """(workload, target port) for `service`:`service_port`, closest to `source` first; see `endpoints.py`."""
        svc = self.service_by_host(service) if isinstance(service, str) else service
        if svc is None:
            return ()
        return service_endpoints(
            svc,
            service_port,
            self.endpoint_workloads(svc),
            source=source,
            healthy_only=healthy_only,
            routing_preference=routing_preference,
        )

    # --- authorization ---
    def policies_for_workload(self, workload: Workload) -> tuple[Policy, ...]:
        """Reference §4 "Which policies apply": namespace, global and the selector policies it names."""
        return self.policy_index.for_workload(workload.namespace, workload.authorization_policies)

    def authorize(self, conn: Connection) -> Decision:
        """Decide `conn` against the policies of its destination workload (found by network + IP). An unknown
        destination gets its namespace's and the global policies (`conn.dst_namespace`)."""
        dest = self.workload_by_address(conn.dst_ip, conn.dst_network)
        if dest is not None:
            return evaluate(self.policies_for_workload(dest), conn)
        return evaluate(self.policy_index.for_workload(conn.dst_namespace), conn)

    def recheck(self, connections: Iterable[Connection]) -> tuple[tuple[Connection, Decision], ...]:
        """The open connections this snapshot now denies, with why — the proxy closes them
        (ztunnel `AuthorizationPolicyLateRejection`, docs/istio.md §4)."""
        out = []
        for conn in connections:
            decision = self.authorize(conn)
            if not decision.allowed:
                out.append((conn, decision))
        return tuple(out)
