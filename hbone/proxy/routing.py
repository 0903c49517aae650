"""Outbound routing for the capture front ends (pure: no sockets, no asyncio).

A front end (SOCKS5, CONNECT proxy, REDIRECT/TPROXY, SNI gateway, ingress) knows only where the client wanted to
go. The route table decides what happens to that destination: tunnel it over HBONE through a given server, dial it
directly, or refuse it. Rules are tried in order; the first match wins; no match takes the table's default.

```yaml
routes:
  - name: mesh                      # for logs and access records
    match: {hosts: ["*.svc.cluster.local"], cidrs: ["10.0.0.0/8"], ports: [80, 443]}
    via: 10.1.2.3:15008             # HBONE server (action defaults to hbone when via is set)
    identities: [spiffe://cluster.local/ns/ns/sa/gw]
    target: "{host}:{port}"         # optional rewrite of the tunnel authority
    token_file: /var/run/secrets/tokens/hop   # `authorization: Bearer` on the CONNECT
  - name: remote                    # double HBONE: outer tunnel to a gateway, mTLS + CONNECT to the workload inside
    match: {hosts: ["*.svc.remote.local"]}
    double_hbone: {gateway: 10.9.0.1:15008, gateway_identities: [...], identities: [...], network: remote}
  - {name: lan, match: {cidrs: ["192.168.0.0/16"]}, action: direct}
  - {name: rest, action: deny}
```
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hbone.errors import BadRequest, ConfigError, Denied, ProtocolError
from hbone.wire.authority import Authority, IPAddress, check_hostname, parse_authority

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    HBONE = "hbone"
    DIRECT = "direct"
    DENY = "deny"


class RouteDenied(Denied):
    """The route table refuses this destination (a CONNECT proxy answers 403, SOCKS5 reply 0x02)."""

    http_status = 403


class NoRoute(BadRequest):
    """No route for this host name: an HTTP ingress answers 404 (and keeps an HTTP/1.1 connection usable)."""

    http_status = 404


def host_matches(pattern: str, host: str) -> bool:
    """`*` matches anything, `*.example.com` any proper subdomain, anything else is an exact (case-less) name."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


@dataclass(frozen=True, slots=True)
class Match:
    """All given criteria must hold; an empty criterion matches anything. CIDRs match IP targets only,
    host patterns match hostname targets (and the literal text of an IP)."""

    hosts: tuple[str, ...] = ()
    cidrs: tuple[IPNetwork, ...] = ()
    ports: tuple[int, ...] = ()

    def matches(self, target: Authority) -> bool:
        if self.ports and target.port not in self.ports:
            return False
        if not self.hosts and not self.cidrs:
            return True
        if target.ip is not None and any(target.ip in net for net in self.cidrs):
            return True
        return any(host_matches(p, target.host) for p in self.hosts)


@dataclass(frozen=True, slots=True)
class Via:
    """The HBONE server a route tunnels through, and how to talk to it."""

    address: Authority
    identities: tuple[str, ...] = ()
    post: bool = False
    inner_tls: bool = False


@dataclass(frozen=True, slots=True)
class DoubleHbone:
    """Reach a workload on another network: outer CONNECT via `gateway`, inner mTLS verified against
    `identities` (the workload's), `network` sent as x-forwarded-network (ztunnel's double HBONE)."""

    gateway: Authority
    gateway_identities: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()
    network: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    action: Action
    match: Match = field(default_factory=Match)
    via: Via | None = None
    #: Rewrite of the tunnel authority / dial target; `{host}` and `{port}` are the original destination's.
    target: str | None = None
    #: File holding a bearer token for the hop (re-read per tunnel, like ztunnel's istio-token).
    token_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    double_hbone: DoubleHbone | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one destination: the route taken and the (possibly rewritten) target."""

    route: Route
    target: Authority

    @property
    def action(self) -> Action:
        return self.route.action


_DEFAULT_DENY = Route("default", Action.DENY)


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...] = ()
    default: Route = _DEFAULT_DENY

    @classmethod
    def via(cls, address: str, identities: Sequence[str] = (), *, post: bool = False) -> RouteTable:
        """Everything through one HBONE server (the `--via HOST:PORT` flag)."""
        via = Via(parse_authority(address), tuple(identities), post)
        return cls((), Route("via", Action.HBONE, via=via))

    def decide(self, target: Authority) -> Decision:
        """First matching route wins; raises RouteDenied for a deny route."""
        route = next((r for r in self.routes if r.match.matches(target)), self.default)
        if route.action is Action.DENY:
            raise RouteDenied(f"destination {target} is not allowed (route {route.name!r})")
        return Decision(route, rewrite(route.target, target) if route.target else target)


def rewrite(template: str, target: Authority) -> Authority:
    try:
        return parse_authority(template.format(host=target.host, port=target.port))
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"route target {template!r} does not give HOST:PORT for {target}: {e}") from e


# --- parsing from config mappings (still pure) ------------------------------------------------------------------

_ROUTE_KEYS = {
    "name", "match", "action", "via", "identities", "post", "inner_tls", "target", "token_file", "headers",
    "double_hbone",
}  # fmt: skip
_DOUBLE_KEYS = {"gateway", "gateway_identities", "identities", "network"}
_MATCH_KEYS = {"hosts", "cidrs", "ports"}


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | int):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _ports(values: Iterable[Any], where: str) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ConfigError(f"{where}: port {v!r} must be an integer 1..65535")
        out.append(v)
    return tuple(out)


def _host_pattern(value: Any, where: str) -> str:
    text = str(value).strip().lower()
    if text == "*":
        return text
    try:
        check_hostname(text[2:] if text.startswith("*.") else text)
    except ProtocolError:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a hostname, '*.suffix' or '*'") from None
    return text


def match_from_dict(data: Mapping[str, Any] | None, where: str) -> Match:
    if data is None:
        return Match()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with hosts/cidrs/ports")
    unknown = sorted(map(str, set(data) - _MATCH_KEYS))  # YAML keys may be booleans, numbers, null
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_MATCH_KEYS))}")
    cidrs = []
    for c in _list(data.get("cidrs"), f"{where}.cidrs"):
        try:
            cidrs.append(ipaddress.ip_network(str(c), strict=False))
        except ValueError as e:
            raise ConfigError(f"{where}.cidrs: {e}") from e
    hosts = tuple(_host_pattern(h, f"{where}.hosts") for h in _list(data.get("hosts"), f"{where}.hosts"))
    return Match(hosts, tuple(cidrs), _ports(_list(data.get("ports"), f"{where}.ports"), f"{where}.ports"))


def route_from_dict(data: Mapping[str, Any], where: str = "route") -> Route:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(map(str, set(data) - _ROUTE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ROUTE_KEYS))}")
    via: Via | None = None
    if data.get("via") is not None:
        try:
            address = parse_authority(str(data["via"]))
        except ProtocolError as e:
            raise ConfigError(f"{where}.via: {e}") from e
        idents = tuple(str(i) for i in _list(data.get("identities"), f"{where}.identities"))
        via = Via(address, idents, bool(data.get("post", False)), bool(data.get("inner_tls", False)))
    double = double_from_dict(data["double_hbone"], f"{where}.double_hbone") if data.get("double_hbone") else None
    if double is not None and via is not None:
        raise ConfigError(f"{where}: give via or double_hbone, not both")
    try:
        action = Action(str(data.get("action", "hbone" if via or double else "direct")))
    except ValueError:
        raise ConfigError(f"{where}.action: {data.get('action')!r} is not one of hbone, direct, deny") from None
    if action is Action.HBONE and via is None and double is None:
        raise ConfigError(f"{where}: action hbone needs via: HOST:PORT (or double_hbone: {{gateway: ...}})")
    headers = data.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError(f"{where}.headers: expected a mapping")
    target = data.get("target")
    route = Route(
        str(data.get("name", where)),
        action,
        match_from_dict(data.get("match"), f"{where}.match"),
        via,
        str(target) if target is not None else None,
        str(data["token_file"]) if data.get("token_file") else None,
        tuple((str(k).lower(), str(v)) for k, v in headers.items()),
        double,
    )
    if route.target is not None:
        rewrite(route.target, Authority("example.com", 1))  # fail at load time, not on the first connection
    return route


def double_from_dict(data: Any, where: str) -> DoubleHbone:
    if not isinstance(data, Mapping) or "gateway" not in data:
        raise ConfigError(f"{where}: expected a mapping with gateway: HOST:PORT")
    unknown = sorted(map(str, set(data) - _DOUBLE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_DOUBLE_KEYS))}")
    try:
        gateway = parse_authority(str(data["gateway"]))
    except ProtocolError as e:
        raise ConfigError(f"{where}.gateway: {e}") from e
    identities = tuple(str(i) for i in _list(data.get("identities"), f"{where}.identities"))
    if not identities:
        raise ConfigError(f"{where}.identities: the workload's SPIFFE ids are required (inner mTLS is end to end)")
    return DoubleHbone(
        gateway,
        tuple(str(i) for i in _list(data.get("gateway_identities"), f"{where}.gateway_identities")),
        identities,
        str(data["network"]) if data.get("network") is not None else None,
    )


def table_from_list(items: Any, where: str = "routes", default: str = "deny") -> RouteTable:
    routes = tuple(route_from_dict(item, f"{where}[{i}]") for i, item in enumerate(_list(items, where)))
    try:
        fallback = Route("default", Action(default))
    except ValueError:
        raise ConfigError(f"{where}: default {default!r} must be direct or deny") from None
    if fallback.action is Action.HBONE:
        raise ConfigError(f"{where}: the default cannot be hbone; add a catch-all route with via")
    return RouteTable(routes, fallback)


def is_ip_in(ip: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(ip in n for n in nets)
