"""AuthorizationPolicy-shaped config → istio.security.Authorization, as istiod converts it for ztunnel.

Reference §4 "How istiod converts AuthorizationPolicy" (istio/istio pilot/pkg/serviceregistry/kube/controller/
ambient/authorization.go). Per rule: every `to` becomes one Match in one clause, every `from` one Match in another
clause, every `when` its own clause. Empty matches are kept on purpose: an empty Match never matches, which is how
a DENY whose only conditions were HTTP attributes ends up with no effect. An ALLOW rule that uses any HTTP
attribute is dropped entirely (more restrictive). Unlike istiod, malformed ports and IPs are errors, not skipped,
since here a human is editing a file and wants to know.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .._pb.istio.security import authorization_pb2 as authz
from .fields import DEFAULT_NAMESPACE, enum, fields, strings, text
from .yamldoc import Located

_SOURCE_L4 = {
    "principals", "not_principals", "namespaces", "not_namespaces", "ip_blocks", "not_ip_blocks",
    "service_accounts", "not_service_accounts",
}  # fmt: skip
_SOURCE_L7 = {"request_principals", "not_request_principals", "remote_ip_blocks", "not_remote_ip_blocks"}
_OPERATION_L4 = {"ports", "not_ports"}
_OPERATION_L7 = {"hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"}
_WHEN_L4 = {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
_POLICY_KEYS = {"name", "namespace", "action", "selector", "workloads", "rules", "dry_run", "scope"}


@dataclass(frozen=True, slots=True)
class Selector:
    """Which workloads a WORKLOAD_SELECTOR policy names: labels to match and/or explicit workload refs."""

    match_labels: dict[str, str]
    workloads: tuple[str, ...]


def policy_selects(sel: Selector | None, pol_ns: str, root_ns: str, workload: Any, labels: dict[str, str]) -> bool:
    """istiod: a selector in the root namespace applies mesh-wide, otherwise within the policy's namespace."""
    if sel is None or pol_ns not in (root_ns, workload.namespace):
        return False
    if sel.workloads:
        refs = {(ref.rpartition("/")[0] or pol_ns, ref.rpartition("/")[2]) for ref in sel.workloads}
        return (workload.namespace, workload.name) in refs
    return all(labels.get(k) == v for k, v in sel.match_labels.items())


def string_matches(values: list[str]) -> list[authz.StringMatch]:
    """istiod's stringToMatch: `*` presence, `*x` suffix, `x*` prefix, else exact."""
    out = []
    for v in values:
        if v == "*":
            m = authz.StringMatch()
            m.presence.SetInParent()
        elif v.startswith("*"):
            m = authz.StringMatch(suffix=v[1:])
        elif v.endswith("*"):
            m = authz.StringMatch(prefix=v[:-1])
        else:
            m = authz.StringMatch(exact=v)
        out.append(m)
    return out


def _addresses(loc: Located, values: list[str]) -> list[authz.Address]:
    out = []
    for v in values:
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise loc.error(f"{v!r} is not an IP address or CIDR") from None
        out.append(authz.Address(address=net.network_address.packed, length=net.prefixlen))
    return out


def _ports(loc: Located, values: list[str]) -> list[int]:
    out = []
    for v in values:
        if not (v.isascii() and v.isdigit()) or not 0 < int(v) < 65536:
            raise loc.error(f"{v!r} is not a port number")
        out.append(int(v))
    return out


def _service_accounts(values: list[str], ns: str) -> list[authz.ServiceAccountMatch]:
    out = []
    for v in values:
        sa_ns, slash, sa = v.partition("/")
        out.append(authz.ServiceAccountMatch(namespace=sa_ns if slash else ns, serviceAccount=sa if slash else v))
    return out


def _unwrap(loc: Located, wrapper: str, allowed: set[str], what: str) -> dict[str, Located]:
    """`{source: {...}}` as in AuthorizationPolicy, or the fields directly (the shorthand)."""
    if isinstance(loc.value, dict) and set(loc.value) == {wrapper}:
        loc = loc.child(wrapper)
    return fields(loc, allowed, what)


def _list(f: dict[str, Located], key: str) -> list[str]:
    return strings(f, key)


def _rule(item: Located, allow: bool, ns: str, warnings: list[str]) -> authz.Rule | None:
    f = fields(item, {"from", "to", "when"}, "rule")
    l7: list[str] = []
    rule = authz.Rule()
    to_matches, from_matches = [], []
    for i, _ in enumerate((f["to"].value or []) if "to" in f else []):
        op = _unwrap(f["to"].child(i), "operation", _OPERATION_L4 | _OPERATION_L7, "operation")
        l7 += [k for k in op if k in _OPERATION_L7]
        m = authz.Match(destination_ports=_ports(f["to"], _list(op, "ports")))
        m.not_destination_ports.extend(_ports(f["to"], _list(op, "not_ports")))
        to_matches.append(m)
    for i, _ in enumerate((f["from"].value or []) if "from" in f else []):
        at = f["from"].child(i)
        src = _unwrap(at, "source", _SOURCE_L4 | _SOURCE_L7, "source")
        l7 += [k for k in src if k in _SOURCE_L7]
        from_matches.append(
            authz.Match(
                source_ips=_addresses(at, _list(src, "ip_blocks")),
                not_source_ips=_addresses(at, _list(src, "not_ip_blocks")),
                namespaces=string_matches(_list(src, "namespaces")),
                not_namespaces=string_matches(_list(src, "not_namespaces")),
                service_accounts=_service_accounts(_list(src, "service_accounts"), ns),
                not_service_accounts=_service_accounts(_list(src, "not_service_accounts"), ns),
                principals=string_matches(_list(src, "principals")),
                not_principals=string_matches(_list(src, "not_principals")),
            )
        )
    if to_matches:
        rule.clauses.add().matches.extend(to_matches)
    if from_matches:
        rule.clauses.add().matches.extend(from_matches)
    for i, _ in enumerate((f["when"].value or []) if "when" in f else []):
        at = f["when"].child(i)
        cond = fields(at, {"key", "values", "not_values"}, "condition")
        key = str(cond["key"].value) if "key" in cond else ""
        if key not in _WHEN_L4:
            l7.append(key)
        rule.clauses.add().matches.append(_when_match(at, key, _list(cond, "values"), _list(cond, "not_values")))
    if l7:
        effect = "the rule is dropped (ALLOW)" if allow else "the rule is enforced without them (DENY)"
        warnings.append(
            f"{item.where}: ztunnel does not enforce HTTP attributes ({', '.join(sorted(set(l7)))}); {effect}"
        )
        if allow:
            return None
    return rule


# when key → (positive field, negative field, value kind)
_WHEN_FIELDS = {
    "source.namespace": ("namespaces", "not_namespaces", "string"),
    "source.principal": ("principals", "not_principals", "string"),
    "source.ip": ("source_ips", "not_source_ips", "ip"),
    "destination.ip": ("destination_ips", "not_destination_ips", "ip"),
    "destination.port": ("destination_ports", "not_destination_ports", "port"),
}


def _when_match(at: Located, key: str, values: list[str], not_values: list[str]) -> authz.Match:
    """istiod's whenMatch: an L4 key fills its field pair; any other key leaves an empty (never matching) Match."""
    m = authz.Match()
    if key in _WHEN_FIELDS:
        pos, neg, kind = _WHEN_FIELDS[key]
        for attr, vals in ((pos, values), (neg, not_values)):
            converted: list[Any] = (
                string_matches(vals) if kind == "string" else _addresses(at, vals) if kind == "ip" else _ports(at, vals)
            )
            getattr(m, attr).extend(converted)
    return m


def convert_policy(item: Located, *, root_namespace: str) -> tuple[authz.Authorization, Selector | None, list[str]]:
    """One shorthand policy → (Authorization, its selector if any, warnings)."""
    f = fields(item, _POLICY_KEYS, "policy")
    name = text(f, "name")
    if not name:
        raise item.error("a policy needs a name")
    ns = text(f, "namespace", DEFAULT_NAMESPACE)
    action = enum(f["action"], authz.Action, "action (ztunnel supports ALLOW and DENY)") if "action" in f else 0
    selector: Selector | None = None
    if "selector" in f or "workloads" in f:
        labels: dict[str, Any] = {}
        if "selector" in f:
            sel = fields(f["selector"], {"match_labels"}, "selector")
            raw = sel["match_labels"].value if "match_labels" in sel else {}
            if not isinstance(raw, dict):
                raise sel["match_labels"].error("matchLabels must be a mapping")
            labels = raw
        selector = Selector({str(k): str(v) for k, v in labels.items()}, tuple(strings(f, "workloads")))
    scope = authz.WORKLOAD_SELECTOR if selector else authz.GLOBAL if ns == root_namespace else authz.NAMESPACE
    if "scope" in f:
        scope = enum(f["scope"], authz.Scope, "scope")  # type: ignore[assignment]
    pol = authz.Authorization(name=name, namespace=ns, scope=scope, action=action)  # type: ignore[arg-type]
    pol.dry_run = bool(f["dry_run"].value) if "dry_run" in f else False
    warnings: list[str] = []
    rules = f.get("rules")
    if rules is not None and not isinstance(rules.value, list):
        raise rules.error("rules must be a list")
    for i, _ in enumerate(rules.value if rules is not None else []):
        rule = _rule(rules.child(i), action == authz.ALLOW, ns, warnings)  # type: ignore[union-attr]
        if rule is not None:
            pol.rules.append(rule)
    return pol, selector, warnings
