"""Endpoints of a service port: target-port resolution, health filter, locality ordering, round robin."""

from __future__ import annotations

import ipaddress
from typing import Any

from hbone.state import MeshState, NetworkAddress, Port, RoundRobin, Service, StateDelta, Workload
from hbone.state.endpoints import DEFAULT_ROUTING_PREFERENCE, best_tier, locality_rank, resolve_target_port
from hbone.state.model import (
    HealthPolicy,
    LbMode,
    LbScope,
    LoadBalancing,
    Locality,
    WorkloadStatus,
)

ip = ipaddress.ip_address
HOST = "web.app.svc.cluster.local"
KEY = f"app/{HOST}"


def service(ports: tuple[Port, ...] = (Port(80, 8080),), lb: LoadBalancing | None = None) -> Service:
    return Service("web", "app", HOST, (NetworkAddress("", ip("10.96.0.1")),), ports, load_balancing=lb)


def endpoint(
    uid: str,
    addr: str,
    ports: tuple[Port, ...] = (),
    locality: Locality | None = None,
    **kw: Any,
) -> Workload:
    return Workload(
        uid, uid, "app", addresses=(ip(addr),), services={KEY: ports}, locality=locality or Locality(), **kw
    )


def test_target_port_numeric_from_the_service() -> None:
    assert resolve_target_port(service(), 80, endpoint("a", "10.0.0.1")) == 8080


def test_target_port_zero_is_named_and_resolved_per_workload() -> None:
    s = service((Port(80, 0),))
    assert resolve_target_port(s, 80, endpoint("a", "10.0.0.1", (Port(80, 9090),))) == 9090
    assert resolve_target_port(s, 80, endpoint("b", "10.0.0.2", (Port(80, 0),))) is None  # not resolvable
    assert resolve_target_port(s, 80, endpoint("c", "10.0.0.3")) is None


def test_target_port_workload_mapping_wins_and_unknown_service_port_has_none() -> None:
    assert resolve_target_port(service(), 80, endpoint("a", "10.0.0.1", (Port(80, 7000),))) == 7000
    assert resolve_target_port(service(), 443, endpoint("a", "10.0.0.1")) is None


def _state(*workloads: Workload, svc: Service | None = None) -> MeshState:
    state = MeshState()
    state.apply(StateDelta(workloads=workloads, services=(svc or service(),)))
    return state


def test_endpoints_resolve_per_workload_and_skip_unresolvable() -> None:
    s = service((Port(80, 0),))
    state = _state(
        endpoint("a", "10.0.0.1", (Port(80, 9090),)),
        endpoint("b", "10.0.0.2", (Port(80, 9091),)),
        endpoint("c", "10.0.0.3"),
        svc=s,
    )
    eps = state.snapshot().endpoints(HOST, 80)
    assert [(e.workload.uid, e.port, str(e.address)) for e in eps] == [("a", 9090, "10.0.0.1"), ("b", 9091, "10.0.0.2")]
    assert state.snapshot().endpoints(HOST, 81) == ()
    assert state.snapshot().endpoints("nope.example", 80) == ()


def test_healthy_filter_follows_health_policy() -> None:
    sick = endpoint("sick", "10.0.0.2", status=WorkloadStatus.UNHEALTHY)
    state = _state(endpoint("ok", "10.0.0.1"), sick)
    snap = state.snapshot()
    assert [e.workload.uid for e in snap.endpoints(KEY, 80)] == ["ok"]
    assert [e.workload.uid for e in snap.endpoints(KEY, 80, healthy_only=False)] == ["ok", "sick"]
    allow_all = service(lb=LoadBalancing(health_policy=HealthPolicy.ALLOW_ALL))
    assert len(snap.endpoints(allow_all, 80)) == 2


R1Z1 = Locality("r1", "z1", "s1")
R1Z2 = Locality("r1", "z2", "s1")
R2Z1 = Locality("r2", "z1", "s1")
PREFS = (LbScope.REGION, LbScope.ZONE, LbScope.SUBZONE)


def test_locality_rank_counts_leading_matching_scopes() -> None:
    src = endpoint("src", "10.0.0.100", locality=R1Z1)
    assert locality_rank(src, endpoint("x", "10.0.0.1", locality=R1Z1), PREFS, strict=False) == 3
    assert locality_rank(src, endpoint("x", "10.0.0.1", locality=R1Z2), PREFS, strict=False) == 1
    assert locality_rank(src, endpoint("x", "10.0.0.1", locality=R2Z1), PREFS, strict=False) == 0
    assert locality_rank(src, endpoint("x", "10.0.0.1", locality=R1Z2), PREFS, strict=True) is None


def test_locality_preference_orders_closest_first_in_failover_mode() -> None:
    far, mid, near = (
        endpoint("far", "10.0.0.1", locality=R2Z1),
        endpoint("mid", "10.0.0.2", locality=R1Z2),
        endpoint("near", "10.0.0.3", locality=R1Z1),
    )
    s = service(lb=LoadBalancing(routing_preference=PREFS, mode=LbMode.FAILOVER))
    state = _state(far, mid, near, svc=s)
    src = endpoint("src", "10.0.0.100", locality=R1Z1)
    eps = state.snapshot().endpoints(KEY, 80, source=src)
    assert [(e.workload.uid, e.rank) for e in eps] == [("near", 3), ("mid", 1), ("far", 0)]
    assert [e.workload.uid for e in best_tier(eps)] == ["near"]


def test_strict_mode_keeps_only_endpoints_matching_every_scope() -> None:
    s = service(lb=LoadBalancing(routing_preference=(LbScope.NETWORK, LbScope.REGION), mode=LbMode.STRICT))
    state = _state(endpoint("same", "10.0.0.1", locality=R1Z2), endpoint("other", "10.0.0.2", locality=R2Z1), svc=s)
    src = endpoint("src", "10.0.0.100", locality=R1Z1)
    assert [e.workload.uid for e in state.snapshot().endpoints(KEY, 80, source=src)] == ["same"]


def test_no_routing_preference_means_no_locality_ordering() -> None:
    state = _state(endpoint("a", "10.0.0.1", locality=R2Z1), endpoint("b", "10.0.0.2", locality=R1Z1))
    src = endpoint("src", "10.0.0.100", locality=R1Z1)
    snap = state.snapshot()
    assert [e.rank for e in snap.endpoints(KEY, 80, source=src)] == [0, 0]
    ordered = snap.endpoints(KEY, 80, source=src, routing_preference=DEFAULT_ROUTING_PREFERENCE)
    assert [e.workload.uid for e in ordered] == ["b", "a"]


def test_round_robin_rotates_over_the_closest_tier_per_key() -> None:
    s = service(lb=LoadBalancing(routing_preference=PREFS))
    state = _state(
        endpoint("n1", "10.0.0.1", locality=R1Z1),
        endpoint("n2", "10.0.0.2", locality=R1Z1),
        endpoint("far", "10.0.0.3", locality=R2Z1),
        svc=s,
    )
    eps = state.snapshot().endpoints(KEY, 80, source=endpoint("src", "10.0.0.100", locality=R1Z1))
    rr = RoundRobin()
    picks = [rr.pick("web:80", eps) for _ in range(4)]
    assert [p.workload.uid for p in picks if p] == ["n1", "n2", "n1", "n2"]
    assert rr.pick("other:80", eps) is not None and rr.pick("other:80", eps).workload.uid == "n2"  # type: ignore[union-attr]
    assert rr.pick("empty", ()) is None
    rr.forget("web:80")
    assert rr.pick("web:80", eps).workload.uid == "n1"  # type: ignore[union-attr]
