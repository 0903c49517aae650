"""Ambient mesh state: `istio.workload` domain types, the store with atomic updates, snapshots and lookups.

Modules: `model` (Workload, Service, ...), `store` (MeshState, StateDelta, StateChange), `snapshot` (MeshSnapshot
lookups), `endpoints` (target ports, locality, round robin). The names below are re-exported for convenience;
nothing runs at import.
"""

from hbone.state.endpoints import Endpoint, RoundRobin, service_endpoints
from hbone.state.model import (
    GatewayAddress,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    Workload,
)
from hbone.state.snapshot import KindChange, MeshSnapshot
from hbone.state.store import ApplyResult, Kind, MeshState, Reject, StateChange, StateDelta

__all__ = [
    "ApplyResult",
    "Endpoint",
    "GatewayAddress",
    "Kind",
    "KindChange",
    "Locality",
    "MeshSnapshot",
    "MeshState",
    "NamespacedHostname",
    "NetworkAddress",
    "Port",
    "Reject",
    "RoundRobin",
    "Service",
    "StateChange",
    "StateDelta",
    "Workload",
    "service_endpoints",
]
