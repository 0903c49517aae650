"""AuthorizationPolicy (the YAML users write) → `Policy`, converted exactly as istiod converts it for ztunnel.

Reference §4 "How istiod converts" (pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go):
- each rule becomes one `Rule`; its `to` operations become one clause (one Match per operation, ports/notPorts),
  its `from` sources another (one Match per source), and every `when` condition one more clause of one Match;
- strings: `*` → presence, `*x` → suffix, `x*` → prefix, otherwise exact; service accounts `ns/sa` or bare `sa`
  (the policy's namespace);
- an ALLOW rule with any L7 attribute is dropped (more restrictive); for DENY the L7 parts are simply left out,
  so a DENY whose rule is only L7 ends up with empty Matches and has no effect (istio/istio#61126);
- scope: a selector → WORKLOAD_SELECTOR; else GLOBAL in the root namespace; else NAMESPACE.

Unlike istiod (which silently skips unparsable ports and IPs after its admission webhook has rejected them), this
module raises `ConfigError` naming the policy and the exact field, because here nothing validated the file earlier.

Accepted shapes: the Kubernetes object (`metadata` + `spec`, `from[].source`, `to[].operation`) and a flat form
(`name`, `namespace`, `action`, `rules`, with source/operation fields directly in `from[]`/`to[]`). Field names are
Istio's camelCase; snake_case spellings are accepted too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hbone.authz.model import (
    Action,
    Clause,
    IPNetwork,
    Match,
    Policy,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from hbone.configtext import unknown_keys_text
from hbone.errors import ConfigError

L4_WHEN_KEYS = frozenset({"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"})
_SOURCE_L4 = ("principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts")
_SOURCE_L4_IPS = ("ipBlocks", "notIpBlocks")
_SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_L4 = ("ports", "notPorts")
_OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_DRY_RUN_ANNOTATION = "istio.io/dry-run"
_SNAKE = re.compile(r"_([a-z])")


@dataclass(frozen=True, slots=True)
class ConvertedPolicy:
    """The policy plus istiod-style warnings (e.g. which L7 attributes were dropped or omitted)."""

    policy: Policy
    warnings: tuple[str, ...] = ()


def policy_from_dict(data: Mapping[str, Any], *, root_namespace: str = "istio-system") -> Policy:
    """Convert one AuthorizationPolicy; raise `ConfigError` naming the field for bad input."""
    return convert_policy(data, root_namespace=root_namespace).policy


def convert_policy(data: Mapping[str, Any], *, root_namespace: str = "istio-system") -> ConvertedPolicy:
    """Like `policy_from_dict`, also returning the warnings istiod would write to the policy's status."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"AuthorizationPolicy must be a mapping, got {type(data).__name__}")
    data = _camel(data)
    if "spec" in data or "metadata" in data:
        _only(data, ("apiVersion", "kind", "metadata", "spec", "status"), "AuthorizationPolicy")
        kind = data.get("kind", "AuthorizationPolicy")
        if kind != "AuthorizationPolicy":
            raise ConfigError(f"expected kind AuthorizationPolicy, got {kind!r}")
        meta = _camel(_mapping(data.get("metadata", {}), "metadata"))
        spec = _camel(_mapping(data.get("spec", {}), "spec"))
        name, namespace = meta.get("name"), meta.get("namespace")
        annotations = _mapping(meta.get("annotations", {}) or {}, "metadata.annotations")
        dry = annotations.get(_DRY_RUN_ANNOTATION, "false")
        dry_run = str(dry).lower() == "true"
        where = "spec."
    else:
        spec, name, namespace = data, data.get("name"), data.get("namespace")
        dry_run = _bool(data.get("dryRun", False), "dryRun")
        where = ""
    if not isinstance(name, str) or not name:
        raise ConfigError("AuthorizationPolicy needs a non-empty string name")
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"AuthorizationPolicy {name!r} needs a non-empty string namespace")
    ctx = _Ctx(f"AuthorizationPolicy {namespace}/{name}")
    flat_keys = ("name", "namespace", "dryRun", "scope") if not where else ()
    allowed = (*flat_keys, "action", "rules", "selector", "targetRef", "targetRefs", "provider")
    _only(spec, allowed, ctx.at(where.rstrip(".") or "policy"))
    if spec.get("targetRef") or spec.get("targetRefs"):
        raise ConfigError(f"{ctx.name}: policies with targetRef(s) are enforced by waypoints, not by the node proxy")

    action_text = spec.get("action", "ALLOW")
    if not isinstance(action_text, str) or action_text.upper() not in ("ALLOW", "DENY", "CUSTOM", "AUDIT"):
        raise ConfigError(f"{ctx.at(where + 'action')}: expected ALLOW or DENY, got {action_text!r}")
    if action_text.upper() in ("CUSTOM", "AUDIT"):
        raise ConfigError(f"{ctx.name}: ztunnel does not support the {action_text.upper()} action")
    action = Action[action_text.upper()]

    if "scope" in spec and not where:
        scope_text = spec["scope"]
        if not isinstance(scope_text, str) or scope_text.upper() not in Scope.__members__:
            raise ConfigError(f"{ctx.at('scope')}: expected GLOBAL, NAMESPACE or WORKLOAD_SELECTOR, got {scope_text!r}")
        scope = Scope[scope_text.upper()]
    elif spec.get("selector") is not None:
        scope = Scope.WORKLOAD_SELECTOR
    else:
        scope = Scope.GLOBAL if namespace == root_namespace else Scope.NAMESPACE

    rules_raw = _list(spec.get("rules", []) or [], ctx.at(where + "rules"))
    rules: list[Rule] = []
    for i, raw in enumerate(rules_raw):
        rule = _convert_rule(raw, action, namespace, ctx, f"{where}rules[{i}]")
        if rule is not None:
            rules.append(rule)
    warnings = tuple(ctx.warnings)
    policy = Policy(name=name, namespace=namespace, scope=scope, action=action, rules=tuple(rules), dry_run=dry_run)
    return ConvertedPolicy(policy, warnings)


class _Ctx:
    def __init__(self, name: str) -> None:
        self.name = name
        self.warnings: list[str] = []

    def at(self, path: str) -> str:
        return f"{self.name}: {path}"


def _convert_rule(raw: Any, action: Action, namespace: str, ctx: _Ctx, path: str) -> Rule | None:
    rule = _camel(_mapping(raw or {}, ctx.at(path)))
    _only(rule, ("from", "to", "when"), ctx.at(path))
    l7: list[str] = []
    clauses: list[Clause] = []

    to_matches: list[Match] = []
    for j, entry in enumerate(_list(rule.get("to", []) or [], ctx.at(f"{path}.to"))):
        where = f"{path}.to[{j}]"
        op = _unwrap(entry, "operation", ctx, where, (*_OPERATION_L4, *_OPERATION_L7))
        l7.extend(k for k in _OPERATION_L7 if op.get(k))
        to_matches.append(
            Match(
                destination_ports=_ports(op.get("ports"), ctx.at(f"{where}.ports")),
                not_destination_ports=_ports(op.get("notPorts"), ctx.at(f"{where}.notPorts")),
            )
        )
    if to_matches:
        clauses.append(Clause(tuple(to_matches)))

    from_matches: list[Match] = []
    for j, entry in enumerate(_list(rule.get("from", []) or [], ctx.at(f"{path}.from"))):
        where = f"{path}.from[{j}]"
        src = _unwrap(entry, "source", ctx, where, (*_SOURCE_L4, *_SOURCE_L4_IPS, *_SOURCE_L7))
        l7.extend(k for k in _SOURCE_L7 if src.get(k))

        def strings(key: str, src: Mapping[str, Any] = src, where: str = where) -> tuple[StringMatch, ...]:
            return _strings(src.get(key), ctx.at(f"{where}.{key}"))

        def sas(key: str, src: Mapping[str, Any] = src, where: str = where) -> tuple[ServiceAccountMatch, ...]:
            return _service_accounts(src.get(key), namespace, ctx.at(f"{where}.{key}"))

        def ips(key: str, src: Mapping[str, Any] = src, where: str = where) -> tuple[IPNetwork, ...]:
            return _cidrs(src.get(key), ctx.at(f"{where}.{key}"))

        from_matches.append(
            Match(
                source_ips=ips("ipBlocks"),
                not_source_ips=ips("notIpBlocks"),
                namespaces=strings("namespaces"),
                not_namespaces=strings("notNamespaces"),
                service_accounts=sas("serviceAccounts"),
                not_service_accounts=sas("notServiceAccounts"),
                principals=strings("principals"),
                not_principals=strings("notPrincipals"),
            )
        )
    if from_matches:
        clauses.append(Clause(tuple(from_matches)))

    for j, raw_when in enumerate(_list(rule.get("when", []) or [], ctx.at(f"{path}.when"))):
        where = f"{path}.when[{j}]"
        cond = _camel(_mapping(raw_when, ctx.at(where)))
        _only(cond, ("key", "values", "notValues"), ctx.at(where))
        key = cond.get("key")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{ctx.at(where + '.key')}: must be a non-empty string")
        if not cond.get("values") and not cond.get("notValues"):
            raise ConfigError(f"{ctx.at(where)}: condition {key!r} needs values or notValues")
        if key not in L4_WHEN_KEYS:
            l7.append(key)
        clauses.append(Clause((_when_match(key, cond, ctx, where),)))

    if l7:
        found = ", ".join(sorted(set(l7)))
        dead = any(c.matches and all(m.is_empty for m in c.matches) for c in clauses)
        if action is Action.ALLOW:
            ctx.warnings.append(
                f"{path}: dropped, ztunnel does not support HTTP attributes ({found}); an ALLOW rule "
                "with HTTP attributes never matches, which is more restrictive than requested"
            )
            return None
        if dead:  # a clause of only empty Matches (L7 parts left out) never matches, so neither does the rule
            ctx.warnings.append(
                f"{path}: HTTP attributes ({found}) leave only empty matches; this DENY rule never "
                "matches in ztunnel (istio/istio#61126)"
            )
        else:
            ctx.warnings.append(f"{path}: HTTP attributes ({found}) omitted; the DENY rule is enforced without them")
    return Rule(tuple(clauses))


def _when_match(key: str, cond: Mapping[str, Any], ctx: _Ctx, where: str) -> Match:
    """One Match holding the positive (`values`) and negative (`notValues`) side of one L4 key; L7 keys → empty."""
    pos, neg = cond.get("values"), cond.get("notValues")
    vpath, npath = ctx.at(f"{where}.values"), ctx.at(f"{where}.notValues")
    if key == "source.namespace":
        return Match(namespaces=_strings(pos, vpath), not_namespaces=_strings(neg, npath))
    if key == "source.principal":
        return Match(principals=_strings(pos, vpath), not_principals=_strings(neg, npath))
    if key == "source.ip":
        return Match(source_ips=_cidrs(pos, vpath), not_source_ips=_cidrs(neg, npath))
    if key == "destination.ip":
        return Match(destination_ips=_cidrs(pos, vpath), not_destination_ips=_cidrs(neg, npath))
    if key == "destination.port":
        return Match(destination_ports=_ports(pos, vpath), not_destination_ports=_ports(neg, npath))
    return Match()


# --- leaf parsers -------------------------------------------------------------------------------------------------


def _camel(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept snake_case spellings of Istio's camelCase field names (`not_principals` → `notPrincipals`)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = _SNAKE.sub(lambda m: m.group(1).upper(), k) if isinstance(k, str) else k
        if key in out:
            raise ConfigError(f"field {k!r} given twice (as {key!r} and in another spelling)")
        out[key] = v
    return out


def _only(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    reason = unknown_keys_text(data, allowed, noun="field")
    if reason is not None:
        raise ConfigError(f"{where}: {reason}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _unwrap(entry: Any, inner: str, ctx: _Ctx, where: str, fields: Sequence[str]) -> dict[str, Any]:
    """`{source: {...}}` / `{operation: {...}}` (Kubernetes shape) or the fields directly (flat shape)."""
    outer = _camel(_mapping(entry, ctx.at(where)))
    if inner in outer:
        _only(outer, (inner,), ctx.at(where))
        body = _camel(_mapping(outer[inner], ctx.at(f"{where}.{inner}")))
        _only(body, fields, ctx.at(f"{where}.{inner}"))
        return body
    _only(outer, fields, ctx.at(where))
    return outer


def _str_values(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    items = _list(value, where)
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}[{i}]: expected a non-empty string, got {v!r}")
    return list(items)


def _strings(value: Any, where: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.from_istio(v) for v in _str_values(value, where))


def _service_accounts(value: Any, namespace: str, where: str) -> tuple[ServiceAccountMatch, ...]:
    out: list[ServiceAccountMatch] = []
    for i, v in enumerate(_str_values(value, where)):
        ns, slash, sa = v.partition("/")
        if not slash:
            ns, sa = namespace, v  # a bare name is in the policy's namespace, as istiod does
        if not ns or not sa or "/" in sa:
            raise ConfigError(f"{where}[{i}]: expected 'namespace/serviceaccount' or 'serviceaccount', got {v!r}")
        out.append(ServiceAccountMatch(ns, sa))
    return tuple(out)


def _cidrs(value: Any, where: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, v in enumerate(_str_values(value, where)):
        try:
            # strict=False: like netip.ParsePrefix, "10.0.0.1/8" means the 10.0.0.0/8 network
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: {v!r} is not an IP address or CIDR") from None
    return tuple(out)


def _ports(value: Any, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    out: list[int] = []
    for i, v in enumerate(_list(value, where)):
        port: int | None = None
        if isinstance(v, int) and not isinstance(v, bool):
            port = v
        elif isinstance(v, str) and v.isascii() and v.isdigit():
            port = int(v)
        if port is None or not 1 <= port <= 65535:
            raise ConfigError(f"{where}[{i}]: expected a port number 1-65535, got {v!r}")
        out.append(port)
    return tuple(out)
