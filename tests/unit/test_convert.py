"""Istio protobuf → hbone domain types (microxds.istio.convert), fed from the file source and from raw protos."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from hbone.authz import model as az
from hbone.authz.engine import evaluate
from hbone.identity.spiffe import SpiffeId
from hbone.state import model as st
from microxds import resources
from microxds._pb.istio.security import authorization_pb2 as authz_pb
from microxds._pb.istio.workload import workload_pb2 as wl_pb
from microxds.errors import ResourceError
from microxds.istio.convert import address_to_domain, authorization_to_domain
from microxds.sources.files import load
from microxds.sources.yamlconfig import parse_texts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_ambient_example_converts() -> None:
    snap = load(EXAMPLES / "ambient.yaml")
    by_name = {n: address_to_domain(r.value) for n, r in snap.resources[resources.ADDRESS].items()}
    alice = by_name["Kubernetes//Pod/default/alice"]
    assert isinstance(alice, st.Workload)
    assert alice.addresses == (ipaddress.ip_address("127.0.0.2"),)
    assert alice.identity == SpiffeId.parse("spiffe://cluster.local/ns/default/sa/alice")
    assert alice.tunnel_protocol is st.TunnelProtocol.HBONE
    assert alice.services["default/echo.default.svc.cluster.local"] == (st.Port(80, 8080, st.AppProtocol.HTTP11),)
    assert st.validate_workload(alice) == []
    echo = by_name["default/echo.default.svc.cluster.local"]
    assert isinstance(echo, st.Service)
    assert echo.addresses == (st.NetworkAddress("", ipaddress.ip_address("10.96.0.10")),)
    assert st.validate_service(echo) == []


def test_workload_all_fields() -> None:
    w = wl_pb.Workload(
        uid="u",
        name="n",
        namespace="ns",
        addresses=[bytes(16)],
        network_mode=wl_pb.HOST_NETWORK,
        waypoint=wl_pb.GatewayAddress(hostname=wl_pb.NamespacedHostname(namespace="ns", hostname="wp")),
        network_gateway=wl_pb.GatewayAddress(
            address=wl_pb.NetworkAddress(network="n2", address=bytes([1, 2, 3, 4])), hbone_mtls_port=15009
        ),
        application_tunnel=wl_pb.ApplicationTunnel(protocol=wl_pb.ApplicationTunnel.PROXY, port=15088),
        locality=wl_pb.Locality(region="r", zone="z", subzone="s"),
        workload_type=wl_pb.POD,
        status=wl_pb.UNHEALTHY,
    )
    w.capacity.value = 0
    d = address_to_domain(wl_pb.Address(workload=w))
    assert isinstance(d, st.Workload)
    assert d.trust_domain == "cluster.local" and d.service_account == "default"
    assert d.addresses == (ipaddress.ip_address("::"),) and d.network_mode is st.NetworkMode.HOST_NETWORK
    assert d.waypoint == st.GatewayAddress(st.NamespacedHostname("ns", "wp"), 15008)
    assert d.network_gateway == st.GatewayAddress(st.NetworkAddress("n2", ipaddress.ip_address("1.2.3.4")), 15009)
    assert d.application_tunnel == st.ApplicationTunnel(st.TunnelApplicationProtocol.PROXY, 15088)
    assert d.locality == st.Locality("r", "z", "s") and d.workload_type is st.WorkloadType.POD
    assert not d.healthy and d.capacity == 0


def test_service_load_balancing_and_cidr() -> None:
    s = wl_pb.Service(
        name="s",
        namespace="ns",
        hostname="s.ns",
        addresses=[wl_pb.NetworkAddress(address=bytes([10, 0, 0, 0]), length=8)],
        load_balancing=wl_pb.LoadBalancing(
            routing_preference=[wl_pb.LoadBalancing.ZONE, wl_pb.LoadBalancing.NETWORK],
            mode=wl_pb.LoadBalancing.FAILOVER,
        ),
        ip_families=wl_pb.DUAL,
    )
    d = address_to_domain(wl_pb.Address(service=s).SerializeToString())
    assert isinstance(d, st.Service)
    assert d.addresses[0].length == 8
    assert d.load_balancing == st.LoadBalancing((st.LbScope.ZONE, st.LbScope.NETWORK), st.LbMode.FAILOVER)
    assert d.ip_families is st.IPFamilies.DUAL and d.key == "ns/s.ns"


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        (wl_pb.Address(), "neither a workload nor a service"),
        (wl_pb.Address(workload=wl_pb.Workload(uid="u", addresses=[b"\x01\x02"])), "not an IPv4"),
        (wl_pb.Address(workload=wl_pb.Workload(uid="u", waypoint=wl_pb.GatewayAddress())), "waypoint"),
    ],
)
def test_bad_address_is_a_resource_error(address: wl_pb.Address, needle: str) -> None:
    with pytest.raises(ResourceError, match=needle) as info:
        address_to_domain(address)
    assert info.value.type_url == resources.ADDRESS
    with pytest.raises(ResourceError, match="cannot decode"):
        address_to_domain(b"\xff\xff")


def test_authorization_converts_and_evaluates() -> None:
    text = textwrap.dedent(
        """\
        workloads:
          - {name: alice, addresses: [127.0.0.2], serviceAccount: alice, labels: {app: alice}}
        policies:
          - name: deny-bob
            action: DENY
            selector: {matchLabels: {app: alice}}
            rules:
              - from: [{source: {principals: ["cluster.local/ns/default/sa/bob"], ipBlocks: [127.0.0.0/8]}}]
                to: [{operation: {ports: ["8080"]}}]
          - {name: strict, namespace: default, action: DENY, rules: [{from: [{notPrincipals: ["*"]}]}]}
        """
    )
    snap = parse_texts([("p.yaml", text)])
    policies = [authorization_to_domain(r.value) for r in snap.resources[resources.AUTHORIZATION].values()]
    deny = next(p for p in policies if p.name == "deny-bob")
    assert deny.scope is az.Scope.WORKLOAD_SELECTOR and deny.action is az.Action.DENY and deny.key == "default/deny-bob"
    (rule,) = deny.rules
    assert rule.clauses[0].matches[0].destination_ports == (8080,)
    assert rule.clauses[1].matches[0].source_ips == (ipaddress.ip_network("127.0.0.0/8"),)
    assert rule.clauses[1].matches[0].principals == (az.StringMatch.exact("cluster.local/ns/default/sa/bob"),)
    strict = next(p for p in policies if p.name == "strict")
    assert strict.rules[0].clauses[0].matches[0].not_principals == (az.StringMatch.presence(),)
    assert all(st.validate_policy(p) == [] for p in policies)

    def conn(sa: str | None, port: int) -> az.Connection:
        ident = SpiffeId.istio("cluster.local", "default", sa) if sa else None
        return az.Connection(
            ident, ipaddress.ip_address("127.0.0.3"), ipaddress.ip_address("127.0.0.2"), port, dst_namespace="default"
        )

    assert not evaluate(policies, conn("bob", 8080)).allowed
    assert evaluate(policies, conn("bob", 9090)).allowed
    assert evaluate(policies, conn("carol", 8080)).allowed
    assert not evaluate(policies, conn(None, 9090)).allowed  # plaintext hits the strict DENY


def test_bad_authorization_is_a_resource_error() -> None:
    pol = authz_pb.Authorization(name="p", namespace="ns", rules=[authz_pb.Rule(clauses=[authz_pb.Clause()])])
    pol.rules[0].clauses[0].matches.add().principals.add()  # a StringMatch with nothing set
    with pytest.raises(ResourceError, match="principals") as info:
        authorization_to_domain(pol)
    assert info.value.name == "ns/p"
    bad_ip = authz_pb.Authorization(name="p", namespace="ns")
    bad_ip.rules.add().clauses.add().matches.add().source_ips.add(address=bytes(4), length=33)
    with pytest.raises(ResourceError, match="prefix length 33"):
        authorization_to_domain(bad_ip)
