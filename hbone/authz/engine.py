"""Pure authorization decisions with Istio ambient (ztunnel) semantics — docs/istio.md §4.

`evaluate(policies, conn)` decides one connection against the policies that apply to its destination workload;
`PolicyIndex` selects those policies from a whole mesh (namespace, global, selector). Policies are compiled once
into flat predicate tuples (cached on the Policy) so evaluation does no parsing or allocation per match; the
source identity and addresses are reduced to plain strings and integers once per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from hbone.authz.model import (
    Action,
    Clause,
    Connection,
    IPNetwork,
    Match,
    Policy,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)

DEFAULT_ROOT_NAMESPACE = "istio-system"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: `policy` is the key of the deciding policy (None when no policy decided)."""

    allowed: bool
    policy: str | None
    reason: str
    dry_run_matches: tuple[str, ...] = ()


# --- the connection, reduced once -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Subject:
    principal: str | None  # identity without spiffe://; None for plaintext
    namespace: str | None  # None for plaintext or a non-Istio SPIFFE id
    service_account: tuple[str, str] | None
    src: tuple[int, int]  # (ip version, integer address)
    dst: tuple[int, int]
    port: int

    @classmethod
    def of(cls, conn: Connection) -> _Subject:
        ident = conn.src_identity
        ns = ident.namespace if ident is not None else None
        sa = ident.service_account if ident is not None else None
        return cls(
            principal=ident.principal if ident is not None else None,
            namespace=ns,
            service_account=(ns, sa) if ns is not None and sa is not None else None,
            src=(conn.src_ip.version, int(conn.src_ip)),
            dst=(conn.dst_ip.version, int(conn.dst_ip)),
            port=conn.dst_port,
        )


_Pred = Callable[[_Subject], bool]


# --- compiling matches ----------------------------------------------------------------------------------------


def _string_set(matches: Sequence[StringMatch]) -> Callable[[str | None], bool]:
    """Any of `matches` hits the value. An absent value (no identity / no namespace) hits nothing (docs/istio.md §4)."""
    exact = frozenset(m.value for m in matches if m.kind is StringMatchKind.EXACT)
    prefixes = tuple(m.value for m in matches if m.kind is StringMatchKind.PREFIX)
    suffixes = tuple(m.value for m in matches if m.kind is StringMatchKind.SUFFIX)
    presence = any(m.kind is StringMatchKind.PRESENCE for m in matches)

    def hit(value: str | None) -> bool:
        if value is None:
            return False
        return (
            value in exact
            or (presence and value != "")
            or (bool(prefixes) and value.startswith(prefixes))
            or (bool(suffixes) and value.endswith(suffixes))
        )

    return hit


def _cidr_set(nets: Sequence[IPNetwork]) -> Callable[[tuple[int, int]], bool]:
    """CIDR containment on integers; a v4 address never matches a v6 network and vice versa."""
    table = tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)

    def hit(addr: tuple[int, int]) -> bool:
        version, value = addr
        # explicit loops here and below: cheaper than any()/all() over a generator on the hot path
        for v, network, mask in table:  # noqa: SIM110
            if v == version and value & mask == network:
                return True
        return False

    return hit


def _sa_set(sas: Sequence[ServiceAccountMatch]) -> Callable[[tuple[str, str] | None], bool]:
    wanted = frozenset((s.namespace, s.service_account) for s in sas)
    return lambda sa: sa is not None and sa in wanted


def _pair(pos: _Pred | None, neg: _Pred | None, out: list[_Pred]) -> None:
    if pos is not None:
        out.append(pos)
    if neg is not None:
        out.append(lambda s: not neg(s))


def _compile_match(m: Match) -> _Pred | None:
    """None for an empty Match (skipped; never matches). Field types AND; any positive, no negative."""
    if m.is_empty:
        return None
    checks: list[_Pred] = []

    def strings(ms: tuple[StringMatch, ...], get: Callable[[_Subject], str | None]) -> _Pred | None:
        if not ms:
            return None
        hit = _string_set(ms)
        return lambda s: hit(get(s))

    def cidrs(ns: tuple[IPNetwork, ...], get: Callable[[_Subject], tuple[int, int]]) -> _Pred | None:
        if not ns:
            return None
        hit = _cidr_set(ns)
        return lambda s: hit(get(s))

    def ports(ps: tuple[int, ...]) -> _Pred | None:
        if not ps:
            return None
        wanted = frozenset(ps)
        return lambda s: s.port in wanted

    def sas(ms: tuple[ServiceAccountMatch, ...]) -> _Pred | None:
        if not ms:
            return None
        hit = _sa_set(ms)
        return lambda s: hit(s.service_account)

    # Cheapest checks first: ports and IPs are integer compares, identities are string work.
    _pair(ports(m.destination_ports), ports(m.not_destination_ports), checks)
    _pair(cidrs(m.destination_ips, _dst), cidrs(m.not_destination_ips, _dst), checks)
    _pair(cidrs(m.source_ips, _src), cidrs(m.not_source_ips, _src), checks)
    _pair(sas(m.service_accounts), sas(m.not_service_accounts), checks)
    _pair(strings(m.principals, _principal), strings(m.not_principals, _principal), checks)
    _pair(strings(m.namespaces, _namespace), strings(m.not_namespaces, _namespace), checks)
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)

    def all_of(s: _Subject) -> bool:
        for check in frozen:  # noqa: SIM110
            if not check(s):
                return False
        return True

    return all_of


def _src(s: _Subject) -> tuple[int, int]:
    return s.src


def _dst(s: _Subject) -> tuple[int, int]:
    return s.dst


def _principal(s: _Subject) -> str | None:
    return s.principal


def _namespace(s: _Subject) -> str | None:
    return s.namespace


_NEVER = "never"
_ALWAYS = "always"


def _compile_clause(c: Clause) -> tuple[_Pred, ...] | str:
    """Matches OR-ed. No matches → always; only empty matches → never (each empty Match is skipped)."""
    if not c.matches:
        return _ALWAYS
    preds = tuple(p for p in (_compile_match(m) for m in c.matches) if p is not None)
    return preds if preds else _NEVER


def _compile_rule(r: Rule) -> tuple[tuple[_Pred, ...], ...] | str:
    """Clauses AND-ed; a rule with no (non-trivial) clauses matches everything."""
    clauses: list[tuple[_Pred, ...]] = []
    for c in r.clauses:
        compiled = _compile_clause(c)
        if compiled == _NEVER:
            return _NEVER
        if compiled != _ALWAYS:
            assert not isinstance(compiled, str)
            clauses.append(compiled)
    return tuple(clauses) if clauses else _ALWAYS


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy reduced to `always` or a tuple of rules, each a tuple of clauses, each a tuple of predicates."""

    always: bool
    rules: tuple[tuple[tuple[_Pred, ...], ...], ...]

    def matches(self, s: _Subject) -> bool:
        if self.always:
            return True
        for rule in self.rules:  # OR
            for clause in rule:  # AND
                for pred in clause:  # OR
                    if pred(s):
                        break
                else:
                    break  # this clause failed, so does the rule
            else:
                return True
        return False


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile (once; cached on the policy). A policy with no rules never matches (docs/istio.md §4)."""
    cached = policy._compiled
    if isinstance(cached, CompiledPolicy):
        return cached
    rules: list[tuple[tuple[_Pred, ...], ...]] = []
    always = False
    for r in policy.rules:
        compiled = _compile_rule(r)
        if compiled == _ALWAYS:
            always = True
            break
        if compiled != _NEVER:
            assert not isinstance(compiled, str)
            rules.append(compiled)
    result = CompiledPolicy(always=always, rules=() if always else tuple(rules))
    object.__setattr__(policy, "_compiled", result)  # benign race: compilation is deterministic
    return result


def policy_matches(policy: Policy, conn: Connection) -> bool:
    """Whether `policy`'s rules match `conn`, ignoring its action and dry-run flag."""
    return compile_policy(policy).matches(_Subject.of(conn))


# --- deciding ---------------------------------------------------------------------------------------------------


def evaluate(policies: Iterable[Policy], conn: Connection) -> Decision:
    """Decide `conn` against the policies that apply to its destination (docs/istio.md §4 "Evaluation order").

    1. any non-dry-run DENY that matches → deny; 2. no (non-dry-run) ALLOW policies → allow;
    3. any ALLOW that matches → allow; 4. otherwise deny. Dry-run policies never decide; the keys of those that
    match are reported in `dry_run_matches`.
    """
    subject = _Subject.of(conn)
    deny: str | None = None
    allow: str | None = None
    allow_count = 0
    dry: list[str] = []
    for p in policies:
        if p.dry_run:
            if compile_policy(p).matches(subject):
                dry.append(p.key)
            continue
        if p.action is Action.DENY:
            if deny is None and compile_policy(p).matches(subject):
                deny = p.key
        else:
            allow_count += 1
            if allow is None and deny is None and compile_policy(p).matches(subject):
                allow = p.key
    dry_matches = tuple(dry)
    if deny is not None:
        return Decision(False, deny, f"denied by DENY policy {deny}", dry_matches)
    if allow_count == 0:
        return Decision(True, None, "allowed: no ALLOW policies apply", dry_matches)
    if allow is not None:
        return Decision(True, allow, f"allowed by ALLOW policy {allow}", dry_matches)
    return Decision(False, None, f"denied: none of {allow_count} ALLOW policies matched", dry_matches)


def is_allowed(policies: Iterable[Policy], conn: Connection) -> bool:
    return evaluate(policies, conn).allowed


# --- which policies apply -----------------------------------------------------------------------------------------


class PolicyIndex:
    """All policies of a mesh, indexed for selection (docs/istio.md §4 "Which policies apply").

    Immutable once built: state snapshots share one index per policy generation. GLOBAL-scope policies apply
    mesh-wide only when they live in `root_namespace` (istiod only sets GLOBAL there); with `root_namespace=""`
    every GLOBAL-scope policy applies, as ztunnel does.
    """

    __slots__ = ("_by_key", "_by_namespace", "_global", "root_namespace")

    def __init__(
        self,
        policies: Mapping[str, Policy] | Iterable[Policy] = (),
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> None:
        self.root_namespace = root_namespace
        items = policies.values() if isinstance(policies, Mapping) else policies
        by_key: dict[str, Policy] = {}
        for p in items:
            by_key[p.key] = p
        by_ns: dict[str, list[Policy]] = {}
        glob: list[Policy] = []
        for key in sorted(by_key):  # deterministic order keeps decisions (and `policy`) stable
            p = by_key[key]
            if p.scope is Scope.NAMESPACE:
                by_ns.setdefault(p.namespace, []).append(p)
            elif p.scope is Scope.GLOBAL and (not self.root_namespace or p.namespace == self.root_namespace):
                glob.append(p)
        self._by_key = by_key
        self._by_namespace = {ns: tuple(ps) for ns, ps in by_ns.items()}
        self._global = tuple(glob)

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Policy | None:
        return self._by_key.get(key)

    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._by_key

    def for_workload(self, namespace: str, selected: Iterable[str] = ()) -> tuple[Policy, ...]:
        """GLOBAL policies, then NAMESPACE policies of `namespace`, then the selector policies the workload names.

        Names that do not resolve are skipped (the policy may simply not have arrived yet), duplicates dropped.
        """
        out = list(self._global)
        out.extend(self._by_namespace.get(namespace, ()))
        seen = {p.key for p in out}
        for key in selected:
            p = self._by_key.get(key)
            if p is not None and key not in seen:
                seen.add(key)
                out.append(p)
        return tuple(out)

    def with_changes(self, upserts: Iterable[Policy], removals: Iterable[str]) -> PolicyIndex:
        """A new index with `removals` dropped and `upserts` added (the old one is untouched)."""
        merged = dict(self._by_key)
        for key in removals:
            merged.pop(key, None)
        for p in upserts:
            merged[p.key] = p
        return PolicyIndex(merged, root_namespace=self.root_namespace)
