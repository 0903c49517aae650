"""Outbound routing (pure): service VIP/hostname → endpoint, waypoint, network gateway, passthrough."""

from __future__ import annotations

import ipaddress

import pytest

from hbone.proxy.outbound import NoRoute, RouteKind, Router
from hbone.state import (
    GatewayAddress,
    MeshSnapshot,
    MeshState,
    NamespacedHostname,
    NetworkAddress,
    Port,
    Service,
    StateDelta,
    Workload,
)
from hbone.state.model import TunnelProtocol, WorkloadStatus
from hbone.wire.authority import Authority

HOST = "bob.default.svc.cluster.local"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def wl(name: str, addr: str, **kw: object) -> Workload:
    kw.setdefault("tunnel_protocol", TunnelProtocol.HBONE)
    return Workload(uid=f"c//Pod/default/{name}", name=name, namespace="default", service_account=name,
                    addresses=(ip(addr),), **kw)  # type: ignore[arg-type]  # fmt: skip


def svc(name: str = "bob", vip: str = "10.96.0.1", **kw: object) -> Service:
    return Service(name=name, namespace="default", hostname=f"{name}.default.svc.cluster.local",
                   addresses=(NetworkAddress("", ip(vip)),), ports=(Port(80, 8080),), **kw)  # type: ignore[arg-type]  # fmt: skip


def snapshot(*items: Workload | Service) -> MeshSnapshot:
    state = MeshState()
    state.apply_atomic(
        StateDelta(
            workloads=tuple(i for i in items if isinstance(i, Workload)),
            services=tuple(i for i in items if isinstance(i, Service)),
        )
    )
    return state.snapshot()


BOB_SVC = {f"default/{HOST}": (Port(80, 8080),)}
ALICE = wl("alice", "10.0.0.2")


def test_vip_and_hostname_route_directly_to_an_endpoint() -> None:
    snap = snapshot(ALICE, wl("bob", "10.0.0.3", services=BOB_SVC), svc(subject_alt_names=("spiffe://x/ns/a/sa/b",)))
    router = Router(hbone_port=15999)
    for target in (Authority.parse("10.96.0.1:80"), Authority.parse(f"{HOST}:80"), Authority.parse("bob:80")):
        if target.host == "bob":
            with pytest.raises(NoRoute):
                router.route(snap, ALICE, target)
            continue
        r = router.route(snap, ALICE, target)
        assert r.kind is RouteKind.DIRECT
        assert str(r.authority) == "10.0.0.3:8080"  # endpoint IP and target port
        assert r.hop is not None and (r.hop.host, r.hop.port) == ("10.0.0.3", 15999)
        assert r.hop.identities == ("spiffe://cluster.local/ns/default/sa/bob", "spiffe://x/ns/a/sa/b")
        assert r.forwarded_host == HOST


def test_round_robin_over_healthy_endpoints_only() -> None:
    snap = snapshot(ALICE, svc(), wl("b1", "10.0.0.11", services=BOB_SVC), wl("b2", "10.0.0.12", services=BOB_SVC),
                    wl("b3", "10.0.0.13", services=BOB_SVC, status=WorkloadStatus.UNHEALTHY))  # fmt: skip
    router = Router()
    hosts = [router.route(snap, ALICE, Authority.parse("10.96.0.1:80")).authority.host for _ in range(4)]
    assert sorted(set(hosts)) == ["10.0.0.11", "10.0.0.12"] and hosts[0] != hosts[1]


def test_no_healthy_endpoint_is_no_route() -> None:
    snap = snapshot(ALICE, svc(), wl("b", "10.0.0.3", services=BOB_SVC, status=WorkloadStatus.UNHEALTHY))
    with pytest.raises(NoRoute, match="no healthy endpoint"):
        Router().route(snap, ALICE, Authority.parse("10.96.0.1:80"))


def test_service_waypoint_keeps_the_vip_authority() -> None:
    waypoint = wl(
        "waypoint", "10.0.0.50", services={"default/waypoint.default.svc.cluster.local": (Port(15008, 15008),)}
    )
    wp_svc = Service("waypoint", "default", "waypoint.default.svc.cluster.local", ports=(Port(15008, 15008),))
    gw = GatewayAddress(NamespacedHostname("default", "waypoint.default.svc.cluster.local"), 15008)
    snap = snapshot(ALICE, waypoint, wp_svc, wl("bob", "10.0.0.3", services=BOB_SVC), svc(waypoint=gw))
    r = Router().route(snap, ALICE, Authority.parse("10.96.0.1:80"))
    assert r.kind is RouteKind.WAYPOINT and str(r.authority) == "10.96.0.1:80"
    assert r.hop is not None and (r.hop.host, r.hop.port) == ("10.0.0.50", 15008)
    assert r.hop.identities == ("spiffe://cluster.local/ns/default/sa/waypoint",)
    # The waypoint itself is routed to the endpoint, not back to itself.
    assert Router().route(snap, waypoint, Authority.parse("10.96.0.1:80")).kind is RouteKind.DIRECT


def test_waypoint_by_address_and_workload_waypoint() -> None:
    gw = GatewayAddress(NetworkAddress("", ip("10.0.0.60")), 15088)
    bob = wl("bob", "10.0.0.3", waypoint=gw)
    snap = snapshot(ALICE, bob)
    r = Router().route(snap, ALICE, Authority.parse("10.0.0.3:8080"))
    assert r.kind is RouteKind.WAYPOINT and str(r.authority) == "10.0.0.3:8080"
    assert r.hop is not None and (r.hop.host, r.hop.port, r.hop.identities) == ("10.0.0.60", 15088, ())
    missing = GatewayAddress(NamespacedHostname("default", "gone.default.svc.cluster.local"))
    with pytest.raises(NoRoute, match="no workloads"):
        Router().route(snapshot(ALICE, wl("bob", "10.0.0.3", waypoint=missing)), ALICE, Authority.parse("10.0.0.3:1"))


def test_endpoint_on_another_network_goes_through_its_gateway() -> None:
    ew = GatewayAddress(NetworkAddress("net2", ip("172.16.0.1")), 15008)
    gateway = Workload(uid="c//Pod/istio-system/ew", name="ew", namespace="istio-system", service_account="ew",
                       network="net2", addresses=(ip("172.16.0.1"),))  # fmt: skip
    remote = wl("bob", "192.168.0.3", network="net2", network_gateway=ew, services=BOB_SVC)
    snap = snapshot(ALICE, gateway, remote, svc())
    r = Router().route(snap, ALICE, Authority.parse("10.96.0.1:80"))
    assert r.kind is RouteKind.GATEWAY
    assert str(r.authority) == f"{HOST}:80"
    assert r.hop is not None and r.hop.host == "172.16.0.1"
    assert r.hop.identities == ("spiffe://cluster.local/ns/istio-system/sa/ew",)
    assert r.inner_identities == ("spiffe://cluster.local/ns/default/sa/bob",)
    no_gw = snapshot(ALICE, wl("bob", "192.168.0.3", network="net2", services=BOB_SVC), svc())
    with pytest.raises(NoRoute, match="no network gateway"):
        Router().route(no_gw, ALICE, Authority.parse("10.96.0.1:80"))


def test_unknown_address_and_non_hbone_workloads_pass_through() -> None:
    snap = snapshot(ALICE, wl("legacy", "10.0.0.9", tunnel_protocol=TunnelProtocol.NONE))
    r = Router().route(snap, ALICE, Authority.parse("8.8.8.8:53"))
    assert r.kind is RouteKind.PASSTHROUGH and str(r.authority) == "8.8.8.8:53"
    r = Router().route(snap, ALICE, Authority.parse("10.0.0.9:22"))
    assert r.kind is RouteKind.PASSTHROUGH and r.workload is not None
    direct = Router().route(snapshot(ALICE, wl("bob", "10.0.0.3")), ALICE, Authority.parse("10.0.0.3:8080"))
    assert direct.kind is RouteKind.DIRECT and str(direct.authority) == "10.0.0.3:8080"
