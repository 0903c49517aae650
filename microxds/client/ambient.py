"""Apply Istio ambient xDS resources (Address, Authorization) to an `hbone.state.MeshState`.

The `ResourceHandler` of an agent's Delta session: each resource is converted on its own (`microxds.istio.convert`,
the one protobuf → domain module); conversion failures and the store's validation rejects are reported per name,
so the session NACKs exactly those while the good ones are applied in one atomic `MeshState.apply`. Address names
are a workload uid or a service `ns/hostname`; removals arrive by name only, so we remember which kind each is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from hbone.authz.model import Policy
from hbone.state import MeshState, Service, StateDelta, Workload
from hbone.state.store import Kind
from microxds.client.state import Received
from microxds.errors import ResourceError
from microxds.istio.convert import address_to_domain, authorization_to_domain
from microxds.resources import ADDRESS, AUTHORIZATION

log = logging.getLogger("microxds.client.ambient")

AMBIENT_TYPES = (ADDRESS, AUTHORIZATION)


class AmbientHandler:
    """Turns xDS Address/Authorization updates into `StateDelta`s. Unknown types are accepted and ignored."""

    def __init__(self, state: MeshState) -> None:
        self.state = state
        self._address_kind: dict[str, Kind] = {}  # resource name -> workload or service
        self.applied = 0

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        if type_url == ADDRESS:
            return self._apply_addresses(resources, removed)
        if type_url == AUTHORIZATION:
            return self._apply_policies(resources, removed)
        return {}

    def _apply_addresses(self, resources: Sequence[Received], removed: Sequence[str]) -> dict[str, str]:
        rejects: dict[str, str] = {}
        workloads: list[Workload] = []
        services: list[Service] = []
        owner: dict[tuple[Kind, str], str] = {}  # domain key -> resource name, to name store rejects
        gone_w: list[str] = []
        gone_s: list[str] = []
        for res in resources:
            try:
                item = address_to_domain(res.body)
            except ResourceError as exc:
                rejects[res.name] = exc.reason
                continue
            key, kind = (item.uid, Kind.WORKLOAD) if isinstance(item, Workload) else (item.key, Kind.SERVICE)
            if key != res.name:
                rejects[res.name] = f"resource name differs from its key {key!r}"
                continue
            if isinstance(item, Workload):
                workloads.append(item)
            else:
                services.append(item)
            # A name that changes kind (workload -> service) drops the old item first.
            if self._address_kind.get(res.name, kind) is not kind:
                (gone_w if kind is Kind.SERVICE else gone_s).append(res.name)
            owner[(kind, key)] = res.name
        for name in removed:
            old_kind: Kind | None = self._address_kind.pop(name, None)
            # Unknown kind: service names are "ns/hostname", workload uids have more slashes (istiod's form).
            if old_kind is Kind.SERVICE or (old_kind is None and name.count("/") == 1):
                gone_s.append(name)
            else:
                gone_w.append(name)
        result = self.state.apply(
            StateDelta(
                workloads=tuple(workloads),
                services=tuple(services),
                removed_workloads=tuple(gone_w),
                removed_services=tuple(gone_s),
            )
        )
        for reject in result.rejects:
            rejects[owner.get((reject.kind, reject.key), reject.key)] = reject.message
        for (kind, _key), name in owner.items():
            if name not in rejects:
                self._address_kind[name] = kind
        self.applied += 1
        return rejects

    def _apply_policies(self, resources: Sequence[Received], removed: Sequence[str]) -> dict[str, str]:
        rejects: dict[str, str] = {}
        policies: list[Policy] = []
        for res in resources:
            try:
                policy = authorization_to_domain(res.body)
            except ResourceError as exc:
                rejects[res.name] = exc.reason
                continue
            if policy.key != res.name:
                rejects[res.name] = f"resource name differs from its key {policy.key!r}"
                continue
            policies.append(policy)
        result = self.state.apply(StateDelta(policies=tuple(policies), removed_policies=tuple(removed)))
        for reject in result.rejects:
            rejects[reject.key] = reject.message
        self.applied += 1
        if rejects:
            log.warning("rejected authorization policies: %s", "; ".join(f"{k}: {v}" for k, v in rejects.items()))
        return rejects
