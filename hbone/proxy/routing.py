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

from hbone.configtext import Where, check_keys, mapping, parse_int, parse_target
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


def _at(where: str | Where) -> Where:
    """Where a routing value is: a `Where` from a config file, or a key path given in code (`routes`)."""
    return where if isinstance(where, Where) else Where("", (where,))


def _list(value: Any, at: Where) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | int):
        return [value]
    if not isinstance(value, list):
        raise at.error(f"expected a list, got {value!r}")
    return value


def _ports(values: Iterable[Any], at: Where) -> tuple[int, ...]:
    return tuple(parse_int(v, at / i, minimum=1, maximum=65535) for i, v in enumerate(values))


def _host_pattern(value: Any, at: Where) -> str:
    text = str(value).strip().lower()
    if text == "*":
        return text
    try:
        check_hostname(text[2:] if text.startswith("*.") else text)
    except ProtocolError:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise at.error(f"{value!r} is not a hostname, '*.suffix' or '*'") from None
    return text


def match_from_dict(data: Mapping[str, Any] | None, where: str | Where) -> Match:
    if data is None:
        return Match()
    at = _at(where)
    check_keys(mapping(data, at, "a mapping with hosts/cidrs/ports"), sorted(_MATCH_KEYS), at)
    cidrs = []
    for i, c in enumerate(_list(data.get("cidrs"), at / "cidrs")):
        try:
            cidrs.append(ipaddress.ip_network(str(c), strict=False))
        except ValueError as e:
            raise (at / "cidrs" / i).error(str(e)) from None
    hosts = tuple(_host_pattern(h, at / "hosts" / i) for i, h in enumerate(_list(data.get("hosts"), at / "hosts")))
    return Match(hosts, tuple(cidrs), _ports(_list(data.get("ports"), at / "ports"), at / "ports"))


def route_from_dict(data: Mapping[str, Any], where: str | Where = "route") -> Route:
    at = _at(where)
    check_keys(mapping(data, at), sorted(_ROUTE_KEYS), at)
    via: Via | None = None
    if data.get("via") is not None:
        address = parse_target(data["via"], at / "via")
        idents = tuple(str(i) for i in _list(data.get("identities"), at / "identities"))
        via = Via(address, idents, bool(data.get("post", False)), bool(data.get("inner_tls", False)))
    double = double_from_dict(data["double_hbone"], at / "double_hbone") if data.get("double_hbone") else None
    if double is not None and via is not None:
        raise at.error("give via or double_hbone, not both")
    try:
        action = Action(str(data.get("action", "hbone" if via or double else "direct")))
    except ValueError:
        raise (at / "action").error(f"{data.get('action')!r} is not one of hbone, direct, deny") from None
    if action is Action.HBONE and via is None and double is None:
        raise at.error("action hbone needs via: HOST:PORT (or double_hbone: {gateway: ...})")
    headers = mapping(data.get("headers") or {}, at / "headers")
    target = data.get("target")
    route = Route(
        str(data.get("name", at.key or str(at))),
        action,
        match_from_dict(data.get("match"), at / "match"),
        via,
        str(target) if target is not None else None,
        str(data["token_file"]) if data.get("token_file") else None,
        tuple((str(k).lower(), str(v)) for k, v in headers.items()),
        double,
    )
    if route.target is not None:
        try:
            rewrite(route.target, Authority("example.com", 1))  # fail at load time, not on the first connection
        except ConfigError as e:
            raise (at / "target").error(str(e)) from None
    return route


def double_from_dict(data: Any, where: str | Where) -> DoubleHbone:
    at = _at(where)
    if not isinstance(data, Mapping) or "gateway" not in data:
        raise at.error("expected a mapping with gateway: HOST:PORT")
    check_keys(data, sorted(_DOUBLE_KEYS), at)
    gateway = parse_target(data["gateway"], at / "gateway")
    identities = tuple(str(i) for i in _list(data.get("identities"), at / "identities"))
    if not identities:
        raise (at / "identities").error("the workload's SPIFFE ids are required (inner mTLS is end to end)")
    return DoubleHbone(
        gateway,
        tuple(str(i) for i in _list(data.get("gateway_identities"), at / "gateway_identities")),
        identities,
        str(data["network"]) if data.get("network") is not None else None,
    )


def table_from_list(items: Any, where: str | Where = "routes", default: str = "deny") -> RouteTable:
    at = _at(where)
    routes = tuple(route_from_dict(item, at / i) for i, item in enumerate(_list(items, at)))
    try:
        fallback = Route("default", Action(default))
    except ValueError:
        raise at.error(f"default {default!r} must be direct or deny") from None
    if fallback.action is Action.HBONE:
        raise at.error("the default cannot be hbone; add a catch-all route with via")
    return RouteTable(routes, fallback)


def is_ip_in(ip: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(ip in n for n in nets)
