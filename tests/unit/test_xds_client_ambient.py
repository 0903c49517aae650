"""AmbientHandler: Istio Address/Authorization resources → MeshState, one reject per bad resource."""

from __future__ import annotations

import ipaddress

from hbone.state import MeshState
from microxds._pb.istio.security import authorization_pb2 as az
from microxds._pb.istio.workload import workload_pb2 as wl
from microxds.client.ambient import AmbientHandler
from microxds.client.state import Received
from microxds.resources import ADDRESS, AUTHORIZATION, CLUSTER, Resource


def received(message: object, type_url: str) -> Received:
    res = Resource.of(message, type_url=type_url)  # type: ignore[arg-type]
    return Received(res.name, res.version, res.value)


def workload(name: str, ip: str) -> wl.Address:
    w = wl.Workload(uid=f"Kubernetes//Pod/default/{name}", name=name, namespace="default", service_account=name)
    w.addresses.append(ipaddress.ip_address(ip).packed)
    w.tunnel_protocol = wl.HBONE
    return wl.Address(workload=w)


def service(name: str, vip: str) -> wl.Address:
    s = wl.Service(name=name, namespace="default", hostname=f"{name}.default.svc.cluster.local")
    s.addresses.append(wl.NetworkAddress(address=ipaddress.ip_address(vip).packed))
    s.ports.append(wl.Port(service_port=80, target_port=8080))
    return wl.Address(service=s)


def deny(name: str, principal: str | None) -> az.Authorization:
    m = az.Match()
    if principal is not None:
        m.principals.append(az.StringMatch(exact=principal))
    else:
        m.principals.append(az.StringMatch())  # no match_type: malformed
    return az.Authorization(
        name=name, namespace="default", action=az.DENY, rules=[az.Rule(clauses=[az.Clause(matches=[m])])]
    )


def test_workloads_and_services_apply_and_remove_by_name() -> None:
    state = MeshState()
    h = AmbientHandler(state)
    rejects = h.apply(ADDRESS, [received(workload("bob", "10.0.0.3"), ADDRESS),
                                received(service("bob", "10.96.0.1"), ADDRESS)], [])  # fmt: skip
    assert rejects == {}
    snap = state.snapshot()
    assert snap.workload_by_address("10.0.0.3") is not None
    assert snap.service_by_vip("10.96.0.1", 80) is not None
    h.apply(ADDRESS, [], ["default/bob.default.svc.cluster.local", "Kubernetes//Pod/default/bob"])
    snap = state.snapshot()
    assert not snap.workloads and not snap.services


def test_bad_address_is_rejected_alone() -> None:
    state = MeshState()
    bad = workload("mallory", "10.0.0.9")
    bad.workload.addresses[0] = b"\x01\x02\x03"  # not an IP
    rejects = AmbientHandler(state).apply(
        ADDRESS, [received(bad, ADDRESS), received(workload("bob", "10.0.0.3"), ADDRESS)], []
    )
    assert list(rejects) == ["Kubernetes//Pod/default/mallory"]
    assert "bytes is not an IPv4 or IPv6" in rejects["Kubernetes//Pod/default/mallory"]
    assert [w.name for w in state.snapshot().workloads.values()] == ["bob"]


def test_undecodable_and_misnamed_resources_are_rejected() -> None:
    h = AmbientHandler(MeshState())
    rejects = h.apply(ADDRESS, [Received("x", "v", b"\xff\xff\xff")], [])
    assert "cannot decode" in rejects["x"]
    good = received(workload("bob", "10.0.0.3"), ADDRESS)
    rejects = h.apply(ADDRESS, [Received("other-name", good.version, good.body)], [])
    assert "differs from its key" in rejects["other-name"]


def test_bad_policy_is_nacked_and_the_previous_policies_stay() -> None:
    state = MeshState()
    h = AmbientHandler(state)
    assert h.apply(AUTHORIZATION, [received(deny("deny-alice", "cluster.local/ns/default/sa/alice"), AUTHORIZATION)],
                   []) == {}  # fmt: skip
    before = dict(state.snapshot().policies)
    rejects = h.apply(AUTHORIZATION, [received(deny("broken", None), AUTHORIZATION)], [])
    assert list(rejects) == ["default/broken"] and "match_type" in rejects["default/broken"]
    assert dict(state.snapshot().policies) == before
    h.apply(AUTHORIZATION, [], ["default/deny-alice"])
    assert not state.snapshot().policies


def test_other_types_are_ignored() -> None:
    assert AmbientHandler(MeshState()).apply(CLUSTER, [Received("c", "v", b"")], []) == {}
