"""The ambient shorthand: workloads, services and AuthorizationPolicy-like policies, converted as istiod does."""

from __future__ import annotations

import textwrap

import pytest

from microxds import resources
from microxds._pb.istio.security import authorization_pb2 as authz
from microxds._pb.istio.workload import workload_pb2 as wl
from microxds.errors import ConfigError
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.yamlconfig import parse_texts


def parse(text: str) -> ConfigSnapshot:
    return parse_texts([("amb.yaml", textwrap.dedent(text))])


def policy(snap: ConfigSnapshot, name: str) -> authz.Authorization:
    return authz.Authorization.FromString(snap.resources[resources.AUTHORIZATION][name].value)


def workload(snap: ConfigSnapshot, uid: str) -> wl.Workload:
    return wl.Address.FromString(snap.resources[resources.ADDRESS][uid].value).workload


BASE = """\
workloads:
  - {name: alice, namespace: ns1, addresses: ["10.0.0.1"], serviceAccount: alice, labels: {app: a}}
  - {name: bob, namespace: ns2, addresses: ["10.0.0.2", "fd00::2"], network: n1, labels: {app: a}}
"""


def test_workload_fields_and_identity() -> None:
    snap = parse(
        """\
        workloads:
          - name: w
            identity: spiffe://example.org/ns/prod/sa/api
            addresses: [10.1.2.3]
            locality: r1/z1
            waypoint: {address: 10.9.9.9}
            applicationTunnel: {protocol: PROXY, port: 15088}
            capacity: 2
        """
    )
    w = workload(snap, "Kubernetes//Pod/prod/w")
    assert (w.namespace, w.trust_domain, w.service_account) == ("prod", "example.org", "api")
    assert w.addresses == [bytes([10, 1, 2, 3])] and w.tunnel_protocol == wl.HBONE
    assert (w.locality.region, w.locality.zone) == ("r1", "z1")
    assert w.waypoint.address.address == bytes([10, 9, 9, 9]) and w.waypoint.hbone_mtls_port == 15008
    assert w.application_tunnel.protocol == wl.ApplicationTunnel.PROXY and w.capacity.value == 2


def test_service_ports_fill_workload_services() -> None:
    snap = parse(
        BASE
        + """\
services:
  - name: echo
    namespace: ns1
    addresses: ["n1/10.96.0.1", "10.96.1.0/24"]
    ports: [80, "443:8443", {port: 9000, targetPort: 9090, protocol: GRPC}]
    workloads: [alice, ns2/bob]
"""
    )
    svc = wl.Address.FromString(snap.resources[resources.ADDRESS]["ns1/echo.ns1.svc.cluster.local"].value).service
    assert [(p.service_port, p.target_port) for p in svc.ports] == [(80, 80), (443, 8443), (9000, 9090)]
    assert svc.addresses[0].network == "n1" and svc.addresses[1].length == 24
    bob = workload(snap, "Kubernetes//Pod/ns2/bob")
    assert len(bob.services["ns1/echo.ns1.svc.cluster.local"].ports) == 3
    assert snap.resources[resources.ADDRESS]["Kubernetes//Pod/ns2/bob"].aliases == ("n1/10.0.0.2", "n1/fd00::2")


def test_policy_conversion_like_istiod() -> None:
    snap = parse(
        BASE
        + """\
policies:
  - name: p
    namespace: ns1
    rules:
      - from:
          - source: {principals: ["*", "cluster.local/*", "*/sa/bob"], serviceAccounts: [bob, other/x]}
          - {namespaces: [ns2], ipBlocks: ["10.0.0.0/8"]}
        to:
          - operation: {ports: ["8080"], notPorts: ["9090"]}
        when:
          - {key: destination.ip, values: ["10.0.0.1"]}
          - {key: source.namespace, notValues: [bad]}
"""
    )
    pol = policy(snap, "ns1/p")
    assert (pol.scope, pol.action) == (authz.NAMESPACE, authz.ALLOW)
    (rule,) = pol.rules
    to, frm, when_ip, when_ns = rule.clauses
    assert list(to.matches[0].destination_ports) == [8080] and list(to.matches[0].not_destination_ports) == [9090]
    principals = frm.matches[0].principals
    assert [p.WhichOneof("match_type") for p in principals] == ["presence", "prefix", "suffix"]
    assert principals[1].prefix == "cluster.local/" and principals[2].suffix == "/sa/bob"
    sas = frm.matches[0].service_accounts
    assert [(s.namespace, s.serviceAccount) for s in sas] == [("ns1", "bob"), ("other", "x")]
    assert frm.matches[1].source_ips[0].length == 8 and frm.matches[1].namespaces[0].exact == "ns2"
    assert when_ip.matches[0].destination_ips[0].address == bytes([10, 0, 0, 1])
    assert when_ns.matches[0].not_namespaces[0].exact == "bad"


def test_l7_attributes_allow_drops_rule_deny_keeps_empty_match() -> None:
    snap = parse(
        BASE
        + """\
policies:
  - name: allow-get
    namespace: ns1
    rules:
      - to: [{operation: {methods: [GET], ports: ["80"]}}]
      - from: [{source: {namespaces: [ns1]}}]
  - name: deny-get
    namespace: ns1
    action: DENY
    rules:
      - to: [{operation: {methods: [GET]}}]
"""
    )
    allow = policy(snap, "ns1/allow-get")
    assert len(allow.rules) == 1 and allow.rules[0].clauses[0].matches[0].namespaces[0].exact == "ns1"
    deny = policy(snap, "ns1/deny-get")
    # The DENY keeps one clause holding an empty Match, which never matches: the policy has no effect.
    assert len(deny.rules) == 1 and deny.rules[0].clauses[0].matches[0] == authz.Match()
    assert len(snap.warnings) == 2 and snap.warnings[0].startswith("amb.yaml:")
    assert "methods" in snap.warnings[0] and "dropped" in snap.warnings[0]


def test_empty_rules_and_allow_all() -> None:
    snap = parse(
        """\
        policies:
          - {name: deny-all, namespace: ns1}
          - {name: allow-all, namespace: ns1, rules: [{}]}
          - {name: mesh, namespace: istio-system, action: DENY, rules: [{from: [{notPrincipals: ["*"]}]}]}
        """
    )
    assert list(policy(snap, "ns1/deny-all").rules) == []
    (rule,) = policy(snap, "ns1/allow-all").rules
    assert list(rule.clauses) == []
    assert policy(snap, "istio-system/mesh").scope == authz.GLOBAL


def test_selectors_attach_policies_to_workloads() -> None:
    snap = parse(
        BASE
        + """\
policies:
  - {name: by-label, namespace: ns1, selector: {matchLabels: {app: a}}, rules: [{}]}
  - {name: mesh-label, namespace: istio-system, selector: {matchLabels: {app: a}}, rules: [{}]}
  - {name: by-name, namespace: ns2, workloads: [bob], rules: [{}]}
"""
    )
    assert policy(snap, "ns1/by-label").scope == authz.WORKLOAD_SELECTOR
    alice = workload(snap, "Kubernetes//Pod/ns1/alice")
    bob = workload(snap, "Kubernetes//Pod/ns2/bob")
    # A selector applies in its own namespace, or mesh-wide from the root namespace.
    assert list(alice.authorization_policies) == ["ns1/by-label", "istio-system/mesh-label"]
    assert list(bob.authorization_policies) == ["istio-system/mesh-label", "ns2/by-name"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("workloads:\n  - name: w\n    adresses: [1.2.3.4]\n", 3, "adresses"),
        ("workloads:\n  - name: w\n    addresses: [1.2.3.400]\n", 3, "not an IP"),
        ("workloads:\n  - name: w\n", 2, "addresses or a hostname"),
        ("workloads:\n  - {name: w, addresses: [1.1.1.1], services: [nope]}\n", 2, "unknown service"),
        ("services:\n  - name: s\n    ports: [70000]\n", 3, "out of range"),
        ("policies:\n  - {name: p, action: CUSTOM}\n", 2, "ALLOW and DENY"),
        ("policies:\n  - name: p\n    rules:\n      - to: [{ports: [http]}]\n", 4, "not a port"),
        ("workloads:\n  - {name: w, addresses: [1.1.1.1], identity: 'spiffe://td/x'}\n", 2, "Istio identity"),
    ],
)
def test_shorthand_errors_have_lines(text: str, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.file == "amb.yaml" and info.value.line == line, info.value
    assert needle in info.value.reason


def test_duplicate_workloads_rejected() -> None:
    with pytest.raises(ConfigError, match=r"duplicate istio\.workload\.Address 'Kubernetes//Pod/default/w'"):
        parse("workloads:\n  - {name: w, addresses: [1.1.1.1]}\n  - {name: w, addresses: [1.1.1.2]}\n")


def test_group_shorthand_combines_with_common() -> None:
    snap = parse(
        BASE
        + """\
groups:
  strict:
    policies:
      - {name: only-ns1, namespace: ns1, selector: {matchLabels: {app: a}}, rules: [{from: [{namespaces: [ns1]}]}]}
"""
    )
    assert resources.AUTHORIZATION not in snap.resources
    view = snap.for_group("strict")
    assert set(view[resources.AUTHORIZATION]) == {"ns1/only-ns1"}
    alice = wl.Address.FromString(view[resources.ADDRESS]["Kubernetes//Pod/ns1/alice"].value).workload
    assert list(alice.authorization_policies) == ["ns1/only-ns1"]
    assert list(workload(snap, "Kubernetes//Pod/ns1/alice").authorization_policies) == []
