"""Property test: the compiled engine agrees with a plain, obviously-correct reading of docs/istio.md §4.

Policies and connections are drawn from tiny domains (two namespaces, two service accounts, a handful of IPs and
ports) so that matches, near-misses, plaintext clients and non-Istio ids all occur often.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.authz.engine import Decision, PolicyIndex, evaluate
from hbone.authz.model import (
    Action,
    Clause,
    Connection,
    Match,
    Policy,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from hbone.identity.spiffe import SpiffeId

NAMESPACES = ["a", "b"]
ACCOUNTS = ["x", "y"]
IPS = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "fd00::1"]
PORTS = [80, 8080]

# --- the reference evaluation, written from the rules, not from the engine -----------------------------------


def ref_string(m: StringMatch, value: str | None) -> bool:
    if value is None:  # no identity / no Istio namespace: nothing to compare with
        return False
    if m.kind is StringMatchKind.EXACT:
        return value == m.value
    if m.kind is StringMatchKind.PREFIX:
        return value[: len(m.value)] == m.value
    if m.kind is StringMatchKind.SUFFIX:
        return len(value) >= len(m.value) and value[len(value) - len(m.value) :] == m.value
    return len(value) > 0


def ref_field(positives: tuple[object, ...], negatives: tuple[object, ...], hit: object) -> bool:
    assert callable(hit)
    any_pos = any(hit(v) for v in positives)
    any_neg = any(hit(v) for v in negatives)
    return (not positives or any_pos) and not any_neg


def ref_match(m: Match, c: Connection) -> bool:
    ident = c.src_identity
    principal = None if ident is None else str(ident).removeprefix("spiffe://")
    ns = None if ident is None else ident.namespace
    sa = None if ident is None else ident.service_account

    def in_net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> object:
        return lambda n: addr.version == n.version and addr in n

    return (
        ref_field(m.namespaces, m.not_namespaces, lambda s: ref_string(s, ns))
        and ref_field(m.principals, m.not_principals, lambda s: ref_string(s, principal))
        and ref_field(
            m.service_accounts,
            m.not_service_accounts,
            lambda s: ns is not None and s.namespace == ns and s.service_account == sa,
        )
        and ref_field(m.source_ips, m.not_source_ips, in_net(c.src_ip))
        and ref_field(m.destination_ips, m.not_destination_ips, in_net(c.dst_ip))
        and ref_field(m.destination_ports, m.not_destination_ports, lambda p: p == c.dst_port)
    )


def ref_policy_matches(p: Policy, c: Connection) -> bool:
    for rule in p.rules:  # rules OR
        rule_ok = True
        for clause in rule.clauses:  # clauses AND
            if not clause.matches:
                continue  # a clause with no matches matches
            # matches OR; empty Matches are skipped
            if not any(ref_match(m, c) for m in clause.matches if not m.is_empty):
                rule_ok = False
        if rule_ok:
            return True
    return False  # includes "no rules never matches"


def ref_evaluate(policies: list[Policy], c: Connection) -> bool:
    live = [p for p in policies if not p.dry_run]
    if any(p.action is Action.DENY and ref_policy_matches(p, c) for p in live):
        return False
    allows = [p for p in live if p.action is Action.ALLOW]
    if not allows:
        return True
    return any(ref_policy_matches(p, c) for p in allows)


# --- generators ---------------------------------------------------------------------------------------------------

small = st.lists
pieces = st.sampled_from(["a", "b", "td", "td/ns/a", "/sa/x", "x", "", "td/ns/a/sa/x"])
string_matches = st.one_of(
    st.builds(StringMatch.exact, pieces),
    st.builds(StringMatch.prefix, pieces),
    st.builds(StringMatch.suffix, pieces),
    st.just(StringMatch.presence()),
)
nets = st.builds(
    lambda a, plen: ipaddress.ip_network(f"{a}/{plen if ':' not in a else plen * 4}", strict=False),
    st.sampled_from(IPS),
    st.sampled_from([0, 16, 24, 32]),
)
sas = st.builds(ServiceAccountMatch, st.sampled_from(NAMESPACES), st.sampled_from(ACCOUNTS))
ports = st.sampled_from([*PORTS, 443])


def tup(s: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return small(s, max_size=2).map(tuple)


matches = st.builds(
    Match,
    namespaces=tup(string_matches),
    not_namespaces=tup(string_matches),
    principals=tup(string_matches),
    not_principals=tup(string_matches),
    source_ips=tup(nets),
    not_source_ips=tup(nets),
    destination_ips=tup(nets),
    not_destination_ips=tup(nets),
    destination_ports=tup(ports),
    not_destination_ports=tup(ports),
    service_accounts=tup(sas),
    not_service_accounts=tup(sas),
)
# Bias towards sparse matches (mostly one or two fields set) so policies match often enough to be interesting.
sparse_matches = st.one_of(
    st.just(Match()),
    st.builds(Match, namespaces=tup(string_matches)),
    st.builds(Match, principals=tup(string_matches), not_principals=tup(string_matches)),
    st.builds(Match, destination_ports=tup(ports), not_source_ips=tup(nets)),
    st.builds(Match, service_accounts=tup(sas), not_namespaces=tup(string_matches)),
    st.builds(Match, source_ips=tup(nets), destination_ips=tup(nets), not_destination_ports=tup(ports)),
    matches,
)
clauses = st.builds(Clause, small(sparse_matches, max_size=3).map(tuple))
rules = st.builds(Rule, small(clauses, max_size=3).map(tuple))
policies = st.builds(
    Policy,
    name=st.sampled_from(["p1", "p2", "p3", "p4"]),
    namespace=st.sampled_from(NAMESPACES),
    scope=st.just(Scope.NAMESPACE),
    action=st.sampled_from([Action.ALLOW, Action.DENY]),
    rules=small(rules, max_size=3).map(tuple),
    dry_run=st.booleans(),
)
identities = st.one_of(
    st.none(),
    st.builds(SpiffeId.istio, st.sampled_from(["td", "other"]), st.sampled_from(NAMESPACES), st.sampled_from(ACCOUNTS)),
    st.just(SpiffeId.parse("spiffe://td/ns/a")),
)
connections = st.builds(
    Connection,
    src_identity=identities,
    src_ip=st.sampled_from(IPS).map(ipaddress.ip_address),
    dst_ip=st.sampled_from(IPS).map(ipaddress.ip_address),
    dst_port=st.sampled_from(PORTS),
    dst_namespace=st.sampled_from(NAMESPACES),
)


@settings(max_examples=500, deadline=None)
@given(small(policies, max_size=5, unique_by=lambda p: p.key), connections)
def test_evaluate_agrees_with_reference(pols: list[Policy], c: Connection) -> None:
    decision = evaluate(pols, c)
    assert decision.allowed is ref_evaluate(pols, c)
    assert set(decision.dry_run_matches) == {p.key for p in pols if p.dry_run and ref_policy_matches(p, c)}
    _check_decision_policy(decision, pols, c)


def _check_decision_policy(decision: Decision, pols: list[Policy], c: Connection) -> None:
    if decision.policy is None:
        return
    (p,) = [q for q in pols if q.key == decision.policy and not q.dry_run][:1]
    assert ref_policy_matches(p, c)
    assert (p.action is Action.DENY) is (not decision.allowed)


@settings(max_examples=200, deadline=None)
@given(small(policies, max_size=6, unique_by=lambda p: p.key), connections)
def test_selection_then_evaluate_equals_filtering_by_namespace(pols: list[Policy], c: Connection) -> None:
    selected = PolicyIndex(pols).for_workload(c.dst_namespace)
    expected = [p for p in pols if p.namespace == c.dst_namespace]
    assert {p.key for p in selected} == {p.key for p in expected}
    assert evaluate(selected, c).allowed is ref_evaluate(expected, c)
