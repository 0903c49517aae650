"""Authorization domain types, mirroring `istio.security.Authorization` field for field.

These are the values the engine evaluates. They carry no protobuf: `microxds.istio.convert` builds them from the
xDS resource, and `hbone.authz.config` builds them from the YAML-ish AuthorizationPolicy form used in config files.
Field names and nesting follow the proto (Authorization → rules → clauses → matches; docs/istio.md §2), so conversion is
one line per field.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from hbone.identity.spiffe import SpiffeId

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Scope(enum.IntEnum):
    """`istio.security.Scope`; values are the proto numbers."""

    GLOBAL = 0
    NAMESPACE = 1
    WORKLOAD_SELECTOR = 2


class Action(enum.IntEnum):
    """`istio.security.Action`; values are the proto numbers. CUSTOM/AUDIT never reach ztunnel (docs/istio.md §4)."""

    ALLOW = 0
    DENY = 1


class StringMatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """`istio.security.StringMatch`: one of exact / prefix / suffix / presence (value is "" for presence)."""

    kind: StringMatchKind
    value: str = ""

    @classmethod
    def exact(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.EXACT, value)

    @classmethod
    def prefix(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.PREFIX, value)

    @classmethod
    def suffix(cls, value: str) -> StringMatch:
        return cls(StringMatchKind.SUFFIX, value)

    @classmethod
    def presence(cls) -> StringMatch:
        return cls(StringMatchKind.PRESENCE, "")

    @classmethod
    def from_istio(cls, text: str) -> StringMatch:
        """istiod's `stringToMatch`: `*` → presence, `*x` → suffix x, `x*` → prefix x, else exact (docs/istio.md §4)."""
        if text == "*":
            return cls.presence()
        if text.startswith("*"):
            return cls.suffix(text[1:])
        if text.endswith("*"):
            return cls.prefix(text[:-1])
        return cls.exact(text)

    def matches(self, value: str) -> bool:
        """ztunnel `StringMatch::matches`; presence means "non-empty"."""
        if self.kind is StringMatchKind.EXACT:
            return value == self.value
        if self.kind is StringMatchKind.PREFIX:
            return value.startswith(self.value)
        if self.kind is StringMatchKind.SUFFIX:
            return value.endswith(self.value)
        return value != ""

    def __str__(self) -> str:
        if self.kind is StringMatchKind.PRESENCE:
            return "*"
        if self.kind is StringMatchKind.PREFIX:
            return f"{self.value}*"
        if self.kind is StringMatchKind.SUFFIX:
            return f"*{self.value}"
        return self.value


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    """`istio.security.ServiceAccountMatch`: exact namespace + service account."""

    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class Match:
    """`istio.security.Match`. Field types are AND-ed; within a field any positive and no negative may match."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IPNetwork, ...] = ()
    not_source_ips: tuple[IPNetwork, ...] = ()
    destination_ips: tuple[IPNetwork, ...] = ()
    not_destination_ips: tuple[IPNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()

    @property
    def is_empty(self) -> bool:
        """An empty Match is skipped and never matches (ztunnel `RbacMatch::is_empty`)."""
        return not (
            self.namespaces
            or self.not_namespaces
            or self.principals
            or self.not_principals
            or self.source_ips
            or self.not_source_ips
            or self.destination_ips
            or self.not_destination_ips
            or self.destination_ports
            or self.not_destination_ports
            or self.service_accounts
            or self.not_service_accounts
        )


@dataclass(frozen=True, slots=True)
class Clause:
    """`istio.security.Clause` (istio/istio calls it `Rules`): matches are OR-ed; no matches at all matches."""

    matches: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """`istio.security.Rule` (istio/istio: `Group`): clauses are AND-ed; no clauses matches everything."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """`istio.security.Authorization`. Rules are OR-ed; a policy with no rules never matches.

    `_compiled` caches the engine's compiled matcher so a policy held in state is compiled once; it takes no part
    in equality, hashing or repr.
    """

    name: str
    namespace: str
    scope: Scope = Scope.NAMESPACE
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    _compiled: object = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __reduce__(self) -> tuple[type[Policy], tuple[object, ...]]:
        # pickle/copy without the compiled matcher (closures cannot be pickled; it is rebuilt on first use)
        return (Policy, (self.name, self.namespace, self.scope, self.action, self.rules, self.dry_run))

    @property
    def key(self) -> str:
        """The xDS resource name, `<namespace>/<name>` (docs/istio.md §2)."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Connection:
    """What is being authorized: one inbound connection as the destination proxy sees it.

    `dst_port` is the target (application) port, never 15008. `dst_namespace`/`dst_identity` describe the
    destination workload and drive policy selection and the same-namespace default. `src_identity` is None for a
    plaintext client.
    """

    src_identity: SpiffeId | None
    src_ip: IPAddress
    dst_ip: IPAddress
    dst_port: int
    dst_namespace: str = ""
    dst_identity: SpiffeId | None = None
    dst_network: str = ""

    def __str__(self) -> str:
        ident = str(self.src_identity) if self.src_identity else "plaintext"
        return f"{self.src_ip}({ident}) -> {self.dst_ip}:{self.dst_port}"
