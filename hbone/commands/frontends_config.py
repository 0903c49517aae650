"""Configuration of the capture front ends and gateways: one YAML file, one listener entry per mode.

```yaml
certs: ./etc/certs                  # our workload identity (Istio or SPIFFE layout)
dial_timeout: 10s
tunnel_idle_timeout: 1h             # a relayed connection with no byte either way for this long is closed (0: never)
default_route: deny                 # what a destination no route matches gets: deny | direct
routes:                             # hbone.proxy.routing: first match wins
  - {name: mesh, match: {hosts: ["*.svc.cluster.local"]}, via: 10.0.0.5:15008}
listeners:
  - {type: socks5, listen: 127.0.0.1:15080, users: {alice: secret}}
  - {type: http-connect, listen: 127.0.0.1:15081}
  - {type: redirect, listen: 127.0.0.1:15001}               # or tproxy
  - {type: inbound-plaintext, listen: 0.0.0.0:15006, proxy_protocol: true, capture: redirect}
  - {type: sni-gateway, listen: 0.0.0.0:15443, default_port: 443}
  - {type: double-hbone-gateway, listen: 0.0.0.0:15008, services: {"echo.ns.svc.cluster.local:80": "10.1.0.7:15008"}}
  - {type: egress, listen: 0.0.0.0:15008, allow: [{match: {hosts: [api.example.com]}, tls: {}}]}
  - {type: h2r-gateway, listen: 0.0.0.0:15441, hbone_listen: 0.0.0.0:15008, names: {bob.example: "spiffe://..."}}
  - {type: h2r-node, gateway: gw.example:15441, gateway_identities: ["spiffe://..."], names: [bob.example]}
  - {type: ingress-tcp, listen: 0.0.0.0:9000, target: db.ns.svc.cluster.local:5432}
  - {type: ingress-tls-passthrough, listen: 0.0.0.0:443, hosts: {"shop.example.com": "shop.ns.svc.cluster.local:443"}}
  - {type: ingress-tls-terminate, listen: 0.0.0.0:8443, certs: {"shop.example.com": ./shop-tls}, hosts: {...}}
  # http: true on ingress-tls-terminate routes each request inside TLS (ALPN h2, http/1.1), like ingress-http
  - {type: ingress-http, listen: 0.0.0.0:8080, hosts: {"shop.example.com": "shop.ns.svc.cluster.local:80"},
     request_timeout: 15s}           # per request: Host / :authority picks the backend; 404/502/504
```
Unknown keys and types are errors, so a typo never silently changes behaviour. Ingress targets are routed through
the same route table (so `via` applies to them too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hbone.admin.options import KEYS as ADMIN_KEYS
from hbone.admin.options import config_keys as admin_config_keys
from hbone.config import read_config, read_proxy_keys
from hbone.configtext import (
    Where,
    check_keys,
    fail,
    mapping,
    parse_duration,
    parse_int,
    parse_listen,
    parse_target,
)
from hbone.configtext import where_of as _where_of
from hbone.net.relay import IDLE_TIMEOUT
from hbone.proxy.egress import rules_from_list
from hbone.proxy.routing import RouteTable, table_from_list
from hbone.wire.authority import Authority

#: listener type → (default listen address or None when it has none, allowed extra keys)
LISTENER_TYPES: dict[str, tuple[str | None, frozenset[str]]] = {
    "socks5": ("127.0.0.1:15080", frozenset({"users"})),
    "http-connect": ("127.0.0.1:15081", frozenset({"users"})),
    "redirect": ("127.0.0.1:15001", frozenset()),
    "tproxy": ("127.0.0.1:15001", frozenset()),
    "inbound-plaintext": ("0.0.0.0:15006", frozenset({"proxy_protocol", "capture"})),
    "sni-gateway": ("0.0.0.0:15443", frozenset({"default_port"})),
    "double-hbone-gateway": ("0.0.0.0:15008", frozenset({"services", "network"})),
    "egress": ("0.0.0.0:15008", frozenset({"allow"})),
    "h2r-gateway": ("0.0.0.0:15441", frozenset({"hbone_listen", "names"})),
    "h2r-node": (None, frozenset({"gateway", "gateway_identities", "names"})),
    "ingress-tcp": (None, frozenset({"target"})),
    "ingress-tls-passthrough": ("0.0.0.0:443", frozenset({"hosts", "default_port"})),
    "ingress-tls-terminate": ("0.0.0.0:443", frozenset({"hosts", "certs", "http", "request_timeout"})),
    "ingress-http": ("0.0.0.0:80", frozenset({"hosts", "request_timeout"})),
}
_TOP = {"certs", "dial_timeout", "tunnel_idle_timeout", "default_route", "routes", "listeners", "mark", *ADMIN_KEYS}


@dataclass(frozen=True)
class ListenerSpec:
    type: str
    listen: Authority | None
    options: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def host(self) -> str:
        assert self.listen is not None
        return str(self.listen.ip) if self.listen.ip is not None else self.listen.host

    @property
    def port(self) -> int:
        assert self.listen is not None
        return self.listen.port


@dataclass
class FrontendsConfig:
    certs: Path | None = None
    dial_timeout: float = 10.0
    tunnel_idle_timeout: float | None = IDLE_TIMEOUT
    mark: int | None = None
    routes: RouteTable = field(default_factory=RouteTable)
    listeners: list[ListenerSpec] = field(default_factory=list)
    admin_ports: dict[str, str] = field(default_factory=dict)  # admin/metrics/readiness keys as written

    @classmethod
    def from_dict(cls, data: Any, source: str | Where = "config") -> FrontendsConfig:
        """Build from a parsed file; `source` names it (a `Where` with the text's lines gives `file:LINE`)."""
        at = _where_of(source)
        check_keys(mapping(data, at, "a mapping at the top level"), sorted(_TOP), at)
        cfg = cls()
        cfg.admin_ports = admin_config_keys(data, at)
        read_proxy_keys(cfg, data, at)
        if data.get("mark") is not None:
            cfg.mark = parse_int(data["mark"], at / "mark", minimum=0, maximum=0xFFFFFFFF)
        cfg.routes = table_from_list(data.get("routes"), at / "routes", str(data.get("default_route", "deny")))
        items = data.get("listeners") or []
        if not isinstance(items, list):
            raise (at / "listeners").error("expected a list")
        cfg.listeners = [listener_from_dict(item, at / "listeners" / i) for i, item in enumerate(items)]
        return cfg


def listener_from_dict(data: Any, where: str | Where) -> ListenerSpec:
    at = _where_of(where)
    if not isinstance(data, Mapping) or "type" not in data:
        raise at.error("expected a mapping with a type")
    kind = str(data["type"])
    if kind not in LISTENER_TYPES:
        raise (at / "type").error(f"unknown listener type {kind!r}; known: {', '.join(LISTENER_TYPES)}")
    default_listen, extra = LISTENER_TYPES[kind]
    check_keys(data, sorted({"type", "listen"} | extra), at, f"listener type {kind}")
    listen_text = data.get("listen", default_listen)
    if kind == "ingress-tcp" and listen_text is None:
        raise at.error("listen is required (ingress-tcp)")
    listen = parse_listen(str(listen_text), at / "listen") if listen_text is not None else None
    options = {k: v for k, v in data.items() if k not in ("type", "listen")}
    _check(kind, options, at)
    return ListenerSpec(kind, listen, options)


def _check(kind: str, options: Mapping[str, Any], at: Where) -> None:
    """Validate the shape of each type's options now, not when the first connection arrives."""
    for key in ("users", "services", "hosts", "certs"):
        if options.get(key) is not None:
            mapping(options[key], at / key)
    if kind in ("ingress-tcp",) and "target" not in options:
        raise at.error("target HOST:PORT is required (ingress-tcp)")
    if "target" in options:
        parse_target(options["target"], at / "target")
    for key in ("services", "hosts"):
        for name, target in (options.get(key) or {}).items():
            parse_target(target, at / key / str(name))
    if kind == "h2r-node":
        if "gateway" not in options:
            raise at.error("gateway HOST:PORT is required (h2r-node)")
        parse_target(options["gateway"], at / "gateway")
        idents = options.get("gateway_identities")
        if not isinstance(idents, list) or not idents:
            raise at.error(
                "gateway_identities (--gateway-identity) is required (h2r-node): the gateway's SPIFFE id, "
                "e.g. spiffe://cluster.local/ns/istio-system/sa/h2r-gateway"
            )
        if not isinstance(options.get("names", []), list):
            raise (at / "names").error("expected a list of names this node serves")
    if kind == "h2r-gateway" and not isinstance(options.get("names", {}), Mapping):
        raise (at / "names").error("expected a mapping name → SPIFFE id")
    if kind == "ingress-tls-terminate" and not options.get("certs"):
        raise at.error("certs {sni: DIR} is required (ingress-tls-terminate)")
    if kind == "inbound-plaintext" and str(options.get("capture", "redirect")) not in ("redirect", "tproxy"):
        raise fail(at / "capture", "must be redirect or tproxy")
    # Values read when the listener starts are checked now, so a bad one is an error at its line.
    if "request_timeout" in options:
        parse_duration(options["request_timeout"], at / "request_timeout")
    if "default_port" in options:
        parse_int(options["default_port"], at / "default_port", minimum=1, maximum=65535)
    if options.get("hbone_listen") is not None:
        parse_listen(str(options["hbone_listen"]), at / "hbone_listen")
    for key in ("proxy_protocol", "http"):
        if key in options and not isinstance(options[key], bool):
            raise fail(at / key, f"expected true or false, got {options[key]!r}")
    if kind == "egress":
        rules_from_list(options.get("allow"), str(at / "allow"))


def load_frontends_config(path: Path) -> FrontendsConfig:
    return FrontendsConfig.from_dict(*read_config(path))
