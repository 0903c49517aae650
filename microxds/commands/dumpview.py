"""How `microxds dump` shows resources: readable IPs in Istio types, a one-line-per-resource table, and the
changes between two responses of a watch. Pure functions over decoded resources (`name`, `version`, fields)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_IP_KEYS = ("address", "addresses")


def readable_ips(value: Any) -> Any:
    """Istio's Address/Workload carry IPs as bytes (base64 in JSON): show `10.0.0.1`, not `CgAAAQ==`."""
    if isinstance(value, dict):
        return {k: _ip_field(v) if k in _IP_KEYS else readable_ips(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable_ips(v) for v in value]
    return value


def _ip_field(value: Any) -> Any:
    if isinstance(value, str):
        return _ip_text(value)
    if isinstance(value, list):
        return [_ip_text(v) if isinstance(v, str) else readable_ips(v) for v in value]
    return readable_ips(value)


def _ip_text(text: str) -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    return text


@dataclass(frozen=True)
class Entry:
    name: str
    version: str | None
    fields: Mapping[str, Any] | None  # None: a Delta heartbeat or alias-only entry

    def digest(self) -> str:
        if self.version:
            return self.version
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()[:16]


def summary_line(entry: Entry) -> tuple[str, str, str, str]:
    """(kind, name, version, what it says in a few words)."""
    f = dict(entry.fields or {})
    kind = str(f.pop("@type", "?")).rsplit(".", 1)[-1]
    return kind, entry.name, entry.version or "-", _detail(kind, f)


def _addr(sa: Mapping[str, Any]) -> str:
    s = sa.get("socket_address", {})
    return f"{s.get('address', '?')}:{s.get('port_value', 0)}" if s else "?"


def _detail(kind: str, f: Mapping[str, Any]) -> str:
    if kind == "Cluster":
        eps = [lb for loc in f.get("load_assignment", {}).get("endpoints", []) for lb in loc.get("lb_endpoints", [])]
        return f"{f.get('type', 'EDS')}" + (f", {len(eps)} endpoint(s)" if eps else "")
    if kind == "ClusterLoadAssignment":
        eps = [lb for loc in f.get("endpoints", []) for lb in loc.get("lb_endpoints", [])]
        shown = [_addr(lb.get("endpoint", {}).get("address", {})) for lb in eps[:3]]
        return f"{len(eps)} endpoint(s) {' '.join(shown)}{' …' if len(eps) > 3 else ''}".strip()
    if kind == "Listener":
        return "api_listener" if "api_listener" in f else _addr(f.get("address", {}))
    if kind == "RouteConfiguration":
        hosts = f.get("virtual_hosts", [])
        return f"{len(hosts)} virtual host(s): {', '.join(d for h in hosts for d in h.get('domains', []))[:60]}"
    if kind == "Address":
        if "workload" in f:
            w = f["workload"]
            ident = f"spiffe://{w.get('trust_domain', 'cluster.local')}/ns/{w.get('namespace', '')}/sa/"
            ident += w.get("service_account", "default")
            return f"workload {' '.join(w.get('addresses', []))} {ident}"
        if "service" in f:
            s = f["service"]
            vips = " ".join(a.get("address", "") for a in s.get("addresses", []))
            return f"service {s.get('hostname', '')} {vips}".strip()
    if kind == "Authorization":
        return f"{f.get('action', 'ALLOW')} {f.get('scope', '')} {len(f.get('groups', []))} rule group(s)".strip()
    return ", ".join(sorted(f))[:60]


def table(entries: Iterable[Entry]) -> str:
    rows = [("TYPE", "NAME", "VERSION", "DETAIL"), *(summary_line(e) for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows)


@dataclass
class WatchState:
    """What the client holds, to print only what each new response changes."""

    held: dict[str, str] = field(default_factory=dict)  # name -> digest
    first: bool = True

    def apply(
        self, entries: list[Entry], removed: Iterable[str], *, full_state: bool
    ) -> tuple[list[Entry], list[Entry], list[str]]:
        """(added, changed, removed) by this response; `full_state`: absent names are removals (SotW)."""
        added: list[Entry] = []
        changed: list[Entry] = []
        seen = set()
        for e in entries:
            seen.add(e.name)
            if e.fields is None:
                continue  # a heartbeat: nothing new
            digest = e.digest()
            before = self.held.get(e.name)
            if before is None:
                added.append(e)
            elif before != digest:
                changed.append(e)
            self.held[e.name] = digest
        gone = [n for n in removed if self.held.pop(n, None) is not None]
        if full_state:
            gone += [n for n in list(self.held) if n not in seen and self.held.pop(n, None) is not None]
        self.first = False
        return added, changed, gone
