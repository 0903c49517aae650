"""Table tests for every rule in docs/istio.md §4 (authorization semantics); each test is named after its rule."""

from __future__ import annotations

import ipaddress
import pickle

import pytest

from hbone.authz.defaults import (
    DefaultMode,
    allow_all_policy,
    default_policies,
    same_namespace_policy,
    static_strict_policy,
)
from hbone.authz.engine import PolicyIndex, compile_policy, evaluate, policy_matches
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
)
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId

ip = ipaddress.ip_address
net = ipaddress.ip_network
E = StringMatch.exact


def conn(
    ident: str | None = "spiffe://td/ns/namespace/sa/account",
    src: str = "127.0.0.1",
    dst: str = "127.0.0.2",
    port: int = 8080,
) -> Connection:
    return Connection(
        src_identity=SpiffeId.parse(ident) if ident else None,
        src_ip=ip(src),
        dst_ip=ip(dst),
        dst_port=port,
        dst_namespace="dst",
    )


PLAINTEXT = conn(None)
TLS = conn()
TLS_ALT = conn("spiffe://td-alt/ns/ns-alt/sa/sa-alt", src="127.0.0.3", dst="127.0.0.4", port=9090)
NON_ISTIO = conn("spiffe://td/workload/namespace")


def pol(*matches: Match, action: Action = Action.ALLOW, name: str = "p", dry_run: bool = False) -> Policy:
    """One rule, one clause, these matches."""
    return Policy(name, "dst", action=action, rules=(Rule((Clause(matches),)),), dry_run=dry_run)


def allow_ns(ns: str, name: str = "allow") -> Policy:
    return pol(Match(namespaces=(E(ns),)), name=name)


def deny_ns(ns: str, name: str = "deny") -> Policy:
    return pol(Match(namespaces=(E(ns),)), action=Action.DENY, name=name)


# --- which policies apply ---------------------------------------------------------------------------------------


def _index() -> PolicyIndex:
    return PolicyIndex(
        [
            Policy("ns-pol", "app", scope=Scope.NAMESPACE),
            Policy("other-ns", "other", scope=Scope.NAMESPACE),
            Policy("mesh", "istio-system", scope=Scope.GLOBAL),
            Policy("stray-global", "app", scope=Scope.GLOBAL),
            Policy("sel", "app", scope=Scope.WORKLOAD_SELECTOR),
            Policy("sel-unused", "app", scope=Scope.WORKLOAD_SELECTOR),
        ]
    )


def test_applies_every_namespace_scope_policy_of_the_workloads_namespace() -> None:
    keys = [p.key for p in _index().for_workload("app")]
    assert "app/ns-pol" in keys and "other/other-ns" not in keys


def test_applies_every_global_policy_from_the_root_namespace() -> None:
    idx = _index()
    assert "istio-system/mesh" in [p.key for p in idx.for_workload("other")]
    assert "app/stray-global" not in [p.key for p in idx.for_workload("app")]
    custom = PolicyIndex(idx.policies, root_namespace="mesh-root")
    assert "istio-system/mesh" not in [p.key for p in custom.for_workload("app")]
    ztunnel_like = PolicyIndex(idx.policies, root_namespace="")
    assert {"istio-system/mesh", "app/stray-global"} <= {p.key for p in ztunnel_like.for_workload("x")}


def test_applies_every_selector_policy_named_by_the_workload() -> None:
    keys = [p.key for p in _index().for_workload("app", ["app/sel", "app/missing", "app/ns-pol"])]
    assert keys.count("app/sel") == 1 and "app/sel-unused" not in keys
    assert keys.count("app/ns-pol") == 1  # named twice (namespace scope and by the workload) → once
    assert "app/missing" not in keys  # not (yet) known → skipped


def test_index_with_changes_is_a_new_index() -> None:
    idx = _index()
    new = idx.with_changes([Policy("x", "app")], ["app/ns-pol"])
    assert idx.get("app/ns-pol") is not None and new.get("app/ns-pol") is None
    assert [p.key for p in new.for_workload("app")] == ["istio-system/mesh", "app/x"]


# --- evaluation order ---------------------------------------------------------------------------------------------


def test_order_1_any_matching_non_dry_run_deny_denies() -> None:
    d = evaluate([allow_ns("namespace"), deny_ns("namespace")], TLS)
    assert not d.allowed and d.policy == "dst/deny"


def test_order_2_no_allow_policies_allows() -> None:
    d = evaluate([deny_ns("other")], TLS)
    assert d.allowed and d.policy is None


def test_order_3_any_matching_allow_allows() -> None:
    d = evaluate([allow_ns("x", "a1"), allow_ns("namespace", "a2"), deny_ns("other")], TLS)
    assert d.allowed and d.policy == "dst/a2"


def test_order_4_otherwise_deny() -> None:
    d = evaluate([allow_ns("x")], TLS)
    assert not d.allowed and d.policy is None and "ALLOW" in d.reason


def test_dry_run_policies_are_only_recorded() -> None:
    dry_deny = pol(Match(namespaces=(E("namespace"),)), action=Action.DENY, name="dd", dry_run=True)
    dry_allow = pol(Match(namespaces=(E("namespace"),)), name="da", dry_run=True)
    d = evaluate([dry_deny, dry_allow], TLS)
    assert d.allowed and d.dry_run_matches == ("dst/dd", "dst/da")
    # a dry-run ALLOW does not count as an ALLOW policy, so it cannot turn "no ALLOW" into deny
    assert evaluate([pol(Match(namespaces=(E("zzz"),)), dry_run=True)], TLS).allowed
    # dry-run matches are reported even when a real DENY decides
    d = evaluate([deny_ns("namespace"), dry_allow], TLS)
    assert not d.allowed and d.dry_run_matches == ("dst/da",)


# --- matching -----------------------------------------------------------------------------------------------------


def test_policy_with_no_rules_never_matches() -> None:
    empty_allow = Policy("a", "dst", action=Action.ALLOW)
    empty_deny = Policy("d", "dst", action=Action.DENY)
    assert not evaluate([empty_allow], TLS).allowed  # an ALLOW with no rules denies everything
    assert evaluate([empty_deny], TLS).allowed  # a DENY with no rules has no effect
    assert not policy_matches(empty_allow, PLAINTEXT)


def test_rules_are_ored() -> None:
    p = Policy(
        "p",
        "dst",
        rules=(
            Rule((Clause((Match(namespaces=(E("a"),)),)),)),
            Rule((Clause((Match(namespaces=(E("namespace"),)),)),)),
        ),
    )
    assert policy_matches(p, TLS) and not policy_matches(p, TLS_ALT)


def test_clauses_within_a_rule_are_anded() -> None:
    rule = Rule((Clause((Match(namespaces=(E("namespace"),)),)), Clause((Match(destination_ports=(80,)),))))
    p = Policy("p", "dst", rules=(rule,))
    assert not policy_matches(p, TLS)  # namespace ok, port 8080 ≠ 80
    assert policy_matches(p, conn(port=80))


def test_rule_with_no_clauses_matches_everything() -> None:
    p = Policy("p", "dst", rules=(Rule(),))
    assert all(policy_matches(p, c) for c in (PLAINTEXT, TLS, TLS_ALT, NON_ISTIO))
    assert policy_matches(Policy("p", "dst", rules=(Rule((Clause(),)),)), PLAINTEXT)  # clause with no matches


def test_matches_within_a_clause_are_ored() -> None:
    p = pol(Match(namespaces=(E("a"),)), Match(namespaces=(E("namespace"),)))
    assert policy_matches(p, TLS) and not policy_matches(p, TLS_ALT)


def test_empty_match_is_skipped_and_never_matches() -> None:
    assert not policy_matches(pol(Match()), TLS)
    assert not policy_matches(pol(Match()), PLAINTEXT)
    p = pol(Match(), Match(destination_ports=(8080,)))  # skipped, the other match still counts
    assert policy_matches(p, TLS)


def test_field_types_within_a_match_are_anded() -> None:
    p = pol(Match(namespaces=(E("namespace"),), destination_ports=(9090,)))
    assert not policy_matches(p, TLS) and policy_matches(p, conn(port=9090))


def test_within_a_field_any_positive_may_match_and_no_negative_may_match() -> None:
    p = pol(Match(destination_ports=(8080, 9090), not_destination_ports=(9090,)))
    assert policy_matches(p, TLS) and not policy_matches(p, TLS_ALT)
    assert not policy_matches(p, conn(port=1))


M = Match
SA = ServiceAccountMatch
FIELD_TABLE = [
    # (rule, match, plaintext, tls, tls_alt) — ztunnel rbac.rs table, expectations as in docs/istio.md §4
    ("namespaces vs source namespace", M(namespaces=(E("namespace"),)), False, True, False),
    ("not_namespaces", M(not_namespaces=(E("namespace"),)), True, False, True),
    ("principals vs identity without spiffe://", M(principals=(E("td/ns/namespace/sa/account"),)), False, True, False),
    ("not_principals", M(not_principals=(E("td/ns/namespace/sa/account"),)), True, False, True),
    ("service_accounts exact ns+sa", M(service_accounts=(SA("namespace", "account"),)), False, True, False),
    ("not_service_accounts", M(not_service_accounts=(SA("namespace", "account"),)), True, False, True),
    ("source_ips CIDR on client ip", M(source_ips=(net("127.0.0.1/32"),)), True, True, False),
    ("not_source_ips", M(not_source_ips=(net("127.0.0.1/32"),)), False, False, True),
    ("destination_ips", M(destination_ips=(net("127.0.0.2/32"),)), True, True, False),
    ("not_destination_ips", M(not_destination_ips=(net("127.0.0.2/32"),)), False, False, True),
    ("destination_ips CIDR range", M(destination_ips=(net("127.0.0.0/24"),)), True, True, True),
    ("destination_ports target port", M(destination_ports=(8080,)), True, True, False),
    ("not_destination_ports", M(not_destination_ports=(8080,)), False, False, True),
    ("plaintext not_principals presence", M(not_principals=(StringMatch.presence(),)), True, False, False),
    ("principals presence", M(principals=(StringMatch.presence(),)), False, True, True),
]


@pytest.mark.parametrize(("rule", "match", "plain", "tls", "alt"), FIELD_TABLE, ids=[r[0] for r in FIELD_TABLE])
def test_each_field_is_checked_against_its_connection_attribute(
    rule: str, match: Match, plain: bool, tls: bool, alt: bool
) -> None:
    p = pol(match)
    assert (policy_matches(p, PLAINTEXT), policy_matches(p, TLS), policy_matches(p, TLS_ALT)) == (plain, tls, alt)


def test_destination_ports_are_the_target_port_not_15008() -> None:
    p = pol(Match(destination_ports=(15008,)))
    assert not policy_matches(p, TLS)


def test_ip_version_mismatch_never_matches() -> None:
    p = pol(Match(source_ips=(net("::/0"),)))
    assert not policy_matches(p, TLS) and policy_matches(p, conn(src="fd00::1", dst="fd00::2"))


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("*", "anything", True),
        ("*", "", False),
        ("*.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", True),
        ("cluster.local/ns/a/*", "cluster.local/ns/a/sa/b", True),
        ("cluster.local/ns/a/*", "cluster.local/ns/b/sa/b", False),
        ("exact", "exact", True),
        ("exact", "exactly", False),
    ],
)
def test_string_matching_star_is_presence_leading_star_suffix_trailing_star_prefix(
    pattern: str, value: str, expected: bool
) -> None:
    assert StringMatch.from_istio(pattern).matches(value) is expected
    assert str(StringMatch.from_istio(pattern)) == pattern


def test_plaintext_client_positive_namespace_principal_sa_matches_all_fail() -> None:
    for m in (
        Match(namespaces=(StringMatch.presence(),)),
        Match(principals=(StringMatch.presence(),)),
        Match(service_accounts=(SA("namespace", "account"),)),
        Match(namespaces=(StringMatch.prefix(""),)),  # even a match-anything prefix: there is no value
    ):
        assert not policy_matches(pol(m), PLAINTEXT)
    assert policy_matches(pol(Match(not_principals=(StringMatch.presence(),))), PLAINTEXT)


def test_non_istio_spiffe_id_matches_principals_but_not_namespace_or_service_account() -> None:
    assert policy_matches(pol(Match(principals=(E("td/workload/namespace"),))), NON_ISTIO)
    assert not policy_matches(pol(Match(namespaces=(StringMatch.presence(),))), NON_ISTIO)
    assert not policy_matches(pol(Match(service_accounts=(SA("namespace", "account"),))), NON_ISTIO)
    assert policy_matches(pol(Match(not_namespaces=(E("namespace"),))), NON_ISTIO)


def test_compiled_policy_is_cached_and_not_part_of_equality() -> None:
    p = allow_ns("namespace")
    q = allow_ns("namespace")
    assert compile_policy(p) is compile_policy(p)
    assert p == q and hash(p) == hash(q) and "_compiled" not in repr(p)
    copied = pickle.loads(pickle.dumps(p))
    assert copied == p and policy_matches(copied, TLS)


# --- default behaviour --------------------------------------------------------------------------------------------


def test_no_policies_allows_everything() -> None:
    assert evaluate([], PLAINTEXT).allowed and evaluate([], TLS).allowed


def test_static_strict_policy_denies_plaintext_only() -> None:
    strict = static_strict_policy()
    assert strict.key == "istio-system/istio_converted_static_strict"
    assert not evaluate([strict], PLAINTEXT).allowed
    assert evaluate([strict], TLS).allowed and evaluate([strict], NON_ISTIO).allowed


def test_same_namespace_default_allows_only_same_trust_domain_and_namespace() -> None:
    p = same_namespace_policy("td", "namespace")
    assert evaluate([p], TLS).allowed
    assert not evaluate([p], conn("spiffe://other/ns/namespace/sa/account")).allowed  # other trust domain
    assert not evaluate([p], conn("spiffe://td/ns/other/sa/account")).allowed  # other namespace
    assert not evaluate([p], conn("spiffe://td.evil/ns/namespace/sa/account")).allowed  # td prefix trick
    assert not evaluate([p], conn("spiffe://td/ns/namespace/sa/x/y")).allowed  # longer non-Istio path
    assert not evaluate([p], PLAINTEXT).allowed


def test_default_modes() -> None:
    dst = SpiffeId.istio("td", "namespace", "server")
    assert evaluate(default_policies(DefaultMode.SAME_NAMESPACE, dst), TLS).allowed
    assert not evaluate(default_policies(DefaultMode.SAME_NAMESPACE, dst), TLS_ALT).allowed
    assert evaluate(default_policies(DefaultMode.ALLOW_ALL, dst), TLS_ALT).allowed
    assert evaluate([allow_all_policy("x")], PLAINTEXT).allowed
    assert default_policies(DefaultMode.POLICIES, dst) == ()
    assert DefaultMode.parse("allow-all") is DefaultMode.ALLOW_ALL
    with pytest.raises(ConfigError, match="unknown authorization mode 'nope'"):
        DefaultMode.parse("nope")
    with pytest.raises(ConfigError, match="needs an Istio identity"):
        default_policies(DefaultMode.SAME_NAMESPACE, SpiffeId.parse("spiffe://td/x"))


def test_policy_authorizer_remembers_decisions_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import hbone.proxy.inbound as inbound

    calls = []
    real = inbound.evaluate

    def counting(policies: object, conn: Connection) -> object:
        calls.append(conn)
        return real(policies, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(inbound, "evaluate", counting)
    policy = same_namespace_policy("cluster.local", "ns")
    authorize = inbound.policy_authorizer([policy], cache_size=2)
    alice = SpiffeId.parse("spiffe://cluster.local/ns/ns/sa/alice")
    mallory = SpiffeId.parse("spiffe://cluster.local/ns/other/sa/mallory")
    ip = ipaddress.ip_address("10.0.0.1")
    allowed = Connection(alice, ip, ip, 80, dst_namespace="ns")
    denied = Connection(mallory, ip, ip, 80, dst_namespace="ns")
    for _ in range(3):
        assert authorize(allowed) == evaluate([policy], allowed) and authorize(allowed).allowed
        assert authorize(denied) == evaluate([policy], denied) and not authorize(denied).allowed
    assert calls == [allowed, denied]  # each question evaluated once
    third = Connection(alice, ip, ip, 81, dst_namespace="ns")
    assert authorize(third).allowed  # a third question: the memory (bounded at 2) starts afresh
    assert authorize(allowed).allowed
    assert calls == [allowed, denied, third, allowed]
