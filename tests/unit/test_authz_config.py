"""AuthorizationPolicy dicts → Policy, converted as istiod converts them (docs/istio.md §4 "How istiod converts")."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from hbone.authz.config import convert_policy, policy_from_dict
from hbone.authz.engine import evaluate
from hbone.authz.model import (
    Action,
    Clause,
    Connection,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId

E = StringMatch.exact


def flat(**kw: Any) -> dict[str, Any]:
    return {"name": "p", "namespace": "ns", **kw}


def test_brief_example_to_from_when_each_become_a_clause_in_that_order() -> None:
    p = policy_from_dict(
        flat(
            action="DENY",
            rules=[
                {
                    "from": [{"principals": ["cluster.local/ns/a/sa/b"]}, {"namespaces": ["c*"]}],
                    "to": [{"ports": [80]}, {"ports": ["8080"], "notPorts": [81]}],
                    "when": [{"key": "source.ip", "values": ["10.0.0.0/8"], "notValues": ["10.1.0.0/16"]}],
                }
            ],
        )
    )
    assert p.action is Action.DENY and p.scope is Scope.NAMESPACE and p.key == "ns/p"
    (rule,) = p.rules
    to, frm, when = rule.clauses
    assert to == Clause((Match(destination_ports=(80,)), Match(destination_ports=(8080,), not_destination_ports=(81,))))
    assert frm == Clause(
        (Match(principals=(E("cluster.local/ns/a/sa/b"),)), Match(namespaces=(StringMatch.prefix("c"),)))
    )
    assert when == Clause(
        (
            Match(
                source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                not_source_ips=(ipaddress.ip_network("10.1.0.0/16"),),
            ),
        )
    )


def test_each_l4_when_key_becomes_one_more_clause() -> None:
    p = policy_from_dict(
        flat(
            rules=[
                {
                    "when": [
                        {"key": "source.namespace", "values": ["*"]},
                        {"key": "source.principal", "notValues": ["*-bad"]},
                        {"key": "destination.ip", "values": ["10.0.0.1"]},
                        {"key": "destination.port", "values": ["80", "443"]},
                    ]
                }
            ]
        )
    )
    assert p.rules[0].clauses == (
        Clause((Match(namespaces=(StringMatch.presence(),)),)),
        Clause((Match(not_principals=(StringMatch.suffix("-bad"),)),)),
        Clause((Match(destination_ips=(ipaddress.ip_network("10.0.0.1/32"),)),)),
        Clause((Match(destination_ports=(80, 443)),)),
    )


def test_kubernetes_shape_with_source_and_operation_and_service_accounts() -> None:
    obj = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"istio.io/dry-run": "true"}},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "rules": [
                {
                    "from": [{"source": {"serviceAccounts": ["other/sa1", "sa2"], "ipBlocks": ["10.0.0.1/8"]}}],
                    "to": [{"operation": {"ports": ["80"]}}],
                }
            ],
        },
    }
    p = policy_from_dict(obj)
    assert p.scope is Scope.WORKLOAD_SELECTOR and p.dry_run and p.action is Action.ALLOW
    frm = p.rules[0].clauses[1].matches[0]
    assert frm.service_accounts == (ServiceAccountMatch("other", "sa1"), ServiceAccountMatch("ns", "sa2"))
    assert frm.source_ips == (ipaddress.ip_network("10.0.0.0/8"),)  # host bits dropped, like netip.ParsePrefix


def test_scope_global_in_root_namespace_namespace_elsewhere() -> None:
    assert policy_from_dict(flat(namespace="istio-system")).scope is Scope.GLOBAL
    assert policy_from_dict(flat(namespace="mesh"), root_namespace="mesh").scope is Scope.GLOBAL
    assert policy_from_dict(flat()).scope is Scope.NAMESPACE
    assert policy_from_dict(flat(scope="workload_selector")).scope is Scope.WORKLOAD_SELECTOR


def test_no_rules_and_empty_rule() -> None:
    assert policy_from_dict(flat()).rules == ()  # ALLOW nothing → denies everything
    assert policy_from_dict(flat(rules=[{}])).rules == (Rule(),)  # rules: [{}] → allow all


def test_allow_rule_with_any_l7_field_is_dropped() -> None:
    conv = convert_policy(
        flat(
            rules=[
                {"to": [{"ports": [80], "methods": ["GET"]}]},
                {"from": [{"requestPrincipals": ["*"]}]},
                {"when": [{"key": "request.headers[x]", "values": ["y"]}]},
                {"from": [{"namespaces": ["ok"]}]},
            ]
        )
    )
    assert conv.policy.rules == (Rule((Clause((Match(namespaces=(E("ok"),)),)),)),)
    assert len(conv.warnings) == 3 and "methods" in conv.warnings[0]


def test_deny_l7_parts_are_omitted_and_only_l7_has_no_effect() -> None:
    conv = convert_policy(flat(action="DENY", rules=[{"to": [{"ports": [80], "paths": ["/admin"]}]}]))
    assert conv.policy.rules == (Rule((Clause((Match(destination_ports=(80,)),)),)),)
    only_l7 = convert_policy(flat(action="DENY", rules=[{"to": [{"methods": ["GET"]}]}]))
    assert only_l7.policy.rules == (Rule((Clause((Match(),)),)),)
    assert "never" in only_l7.warnings[0]
    c = Connection(SpiffeId.istio("td", "a", "b"), ipaddress.ip_address("1.1.1.1"), ipaddress.ip_address("2.2.2.2"), 80)
    assert evaluate([only_l7.policy], c).allowed  # istio/istio#61126: the DENY has no effect


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"namespace": "ns"}, "needs a non-empty string name"),
        ({"name": "p"}, "'p' needs a non-empty string namespace"),
        (flat(action="CUSTOM"), "ztunnel does not support the CUSTOM action"),
        (flat(action="AUDIT"), "does not support the AUDIT action"),
        (flat(action="MAYBE"), "action: expected ALLOW or DENY, got 'MAYBE'"),
        (flat(scope="WIDE"), "scope: expected GLOBAL, NAMESPACE or WORKLOAD_SELECTOR"),
        (flat(rules={"from": []}), "rules: expected a list, got dict"),
        (flat(rules=[{"form": []}]), r"rules\[0\]: unknown field 'form' \(did you mean 'from'\?\)"),
        (
            flat(rules=[{"to": [{"ports": [0]}]}]),
            r"rules\[0\].to\[0\].ports\[0\]: expected a port number 1-65535, got 0",
        ),
        (flat(rules=[{"to": [{"ports": ["http"]}]}]), "expected a port number 1-65535, got 'http'"),
        (flat(rules=[{"to": [{"ports": [True]}]}]), "got True"),
        (flat(rules=[{"from": [{"ipBlocks": ["10.0.0.300"]}]}]), r"from\[0\].ipBlocks\[0\]: '10.0.0.300' is not an IP"),
        (flat(rules=[{"from": [{"principals": "a"}]}]), "principals: expected a list, got str"),
        (flat(rules=[{"from": [{"principals": [""]}]}]), r"principals\[0\]: expected a non-empty string"),
        (flat(rules=[{"from": [{"serviceAccounts": ["a/b/c"]}]}]), "expected 'namespace/serviceaccount'"),
        (
            flat(rules=[{"from": [{"source": {"principals": ["x"]}, "extra": 1}]}]),
            r"from\[0\]: unknown field 'extra'; known: ",
        ),
        (flat(rules=[{"when": [{"key": "source.ip"}]}]), "condition 'source.ip' needs values or notValues"),
        (flat(rules=[{"when": [{"values": ["x"]}]}]), r"when\[0\].key: must be a non-empty string"),
        (flat(targetRefs=[{"kind": "Service", "name": "x"}]), "enforced by waypoints"),
        (flat(bogus=1), r"unknown field 'bogus'; known: "),
        (flat(dry_run="yes"), "dryRun: expected true or false"),
        ({"kind": "Gateway", "metadata": {}, "spec": {}}, "expected kind AuthorizationPolicy"),
        ({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"name": "x"}}, r"spec: unknown field 'name'"),
        ([1], "must be a mapping"),
    ],
)
def test_bad_input_raises_precise_config_error(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from_dict(data)


def test_error_names_the_policy() -> None:
    with pytest.raises(ConfigError, match=r"^AuthorizationPolicy ns/p: rules\[0\]"):
        policy_from_dict(flat(rules=[{"to": [{"ports": [70000]}]}]))


def test_snake_case() -> None:
    p = policy_from_dict(flat(dry_run=True, rules=[{"from": [{"not_principals": ["*"]}]}]))
    assert p.dry_run and p.rules[0].clauses[0].matches[0].not_principals == (StringMatch.presence(),)
    with pytest.raises(ConfigError, match="given twice"):
        policy_from_dict(flat(dryRun=True, dry_run=True))
