"""The ambient shorthand: `workloads:`, `services:` and `policies:` written like Kubernetes objects.

They become istio.workload.Address and istio.security.Authorization resources the way istiod builds them:
- a workload is keyed by uid (default `Kubernetes//Pod/<ns>/<name>`, istiod's form for pods); its identity is
  `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`;
- `Workload.services` lists the services a workload backs, with their ports (from the service's `workloads:` or
  the workload's `services:`);
- policies follow istiod's AuthorizationPolicy conversion (pilot/pkg/serviceregistry/kube/controller/ambient/
  authorization.go, described in docs/istio.md §4): `to` ports make one clause, `from` sources another, each L4 `when`
  one more; an ALLOW rule with an HTTP attribute is dropped and a DENY rule loses its HTTP attributes (with a
  warning); selector policies are named in `Workload.authorization_policies`.
Keys may be camelCase or snake_case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hbone.errors import IdentityError
from hbone.identity.spiffe import SpiffeId

from .. import resources
from .._pb.istio.workload import workload_pb2 as wl
from .fields import DEFAULT_NAMESPACE, enum, fields, strings, text
from .policies import convert_policy, policy_selects
from .yamldoc import Located

_WORKLOAD_KEYS = {
    "name", "namespace", "uid", "addresses", "hostname", "network", "identity", "service_account", "trust_domain",
    "protocol", "tunnel_protocol", "node", "cluster_id", "canonical_name", "canonical_revision", "workload_name",
    "workload_type", "locality", "services", "policies", "labels", "waypoint", "network_gateway", "status",
    "capacity", "network_mode", "application_tunnel", "native_tunnel",
}  # fmt: skip
_SERVICE_KEYS = {
    "name", "namespace", "hostname", "addresses", "ports", "subject_alt_names", "waypoint", "workloads",
    "load_balancing", "ip_families", "canonical", "ingress_use_waypoint", "visibility",
}  # fmt: skip


def ip_bytes(loc: Located, value: str) -> bytes:
    try:
        return ipaddress.ip_address(value).packed
    except ValueError:
        raise loc.error(f"{value!r} is not an IP address") from None


def ports(loc: Located) -> list[wl.Port]:
    """`80`, `"80:8080"`, or `{port, targetPort, protocol}`."""
    if not isinstance(loc.value, list):
        raise loc.error("ports must be a list")
    out: list[wl.Port] = []
    for i, raw in enumerate(loc.value):
        at = loc.child(i)
        if isinstance(raw, dict):
            f = fields(at, {"port", "service_port", "target_port", "protocol", "app_protocol", "name"}, "port")
            given = f.get("port") or f.get("service_port")
            if given is None:
                raise at.error("a port needs `port`")
            svc = _port_number(given)
            target = _port_number(f["target_port"]) if "target_port" in f else svc
            proto = f.get("protocol") or f.get("app_protocol")
            app = enum(proto, wl.AppProtocol, "app protocol") if proto is not None else 0
            out.append(wl.Port(service_port=svc, target_port=target, app_protocol=app))  # type: ignore[arg-type]
        else:
            svc_text, _, target_text = str(raw).partition(":")
            svc = _port_number(Located(at.doc, at.path, svc_text))
            target = _port_number(Located(at.doc, at.path, target_text)) if target_text else svc
            out.append(wl.Port(service_port=svc, target_port=target))
    return out


def _port_number(loc: Located) -> int:
    try:
        port = int(str(loc.value))
    except ValueError:
        raise loc.error(f"{loc.value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise loc.error(f"port {port} is out of range 1-65535")
    return port


def network_address(loc: Located, raw: str) -> wl.NetworkAddress:
    """`10.0.0.1`, `10.0.0.0/24`, or either prefixed by a network: `net1/10.0.0.1`."""
    network = ""
    head, sep, rest = raw.partition("/")
    if sep:
        try:
            ipaddress.ip_address(head)
        except ValueError:
            network, raw = head, rest
    addr, _, length = raw.partition("/")
    na = wl.NetworkAddress(network=network, address=ip_bytes(loc, addr))
    if length:
        if not (length.isascii() and length.isdigit()) or int(length) > len(na.address) * 8:
            raise loc.error(f"bad prefix length in {raw!r}")
        na.length = int(length)
    return na


def gateway(loc: Located) -> wl.GatewayAddress:
    """`{address: 10.0.0.9, network: n, port: 15008}` or `{hostname: ns/host, port: 15008}`."""
    f = fields(loc, {"address", "network", "hostname", "port", "hbone_mtls_port"}, "gateway")
    port = f.get("port") or f.get("hbone_mtls_port")
    gw = wl.GatewayAddress(hbone_mtls_port=_port_number(port) if port is not None else 15008)
    if "address" in f:
        gw.address.CopyFrom(wl.NetworkAddress(network=text(f, "network"), address=ip_bytes(loc, text(f, "address"))))
    elif "hostname" in f:
        ns, _, host = text(f, "hostname").rpartition("/")
        gw.hostname.CopyFrom(wl.NamespacedHostname(namespace=ns or DEFAULT_NAMESPACE, hostname=host))
    else:
        raise loc.error("a gateway needs an address or a hostname")
    return gw


@dataclass
class _Service:
    item: Located
    msg: wl.Service
    workload_refs: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.msg.namespace}/{self.msg.hostname}"


@dataclass
class _Workload:
    item: Located
    msg: wl.Workload
    labels: dict[str, str]
    service_refs: list[str]


def build_service(item: Located) -> _Service:
    f = fields(item, _SERVICE_KEYS, "service")
    name = text(f, "name")
    if not name:
        raise item.error("a service needs a name")
    ns = text(f, "namespace", DEFAULT_NAMESPACE)
    svc = wl.Service(name=name, namespace=ns, hostname=text(f, "hostname", f"{name}.{ns}.svc.cluster.local"))
    svc.addresses.extend(network_address(f["addresses"], raw) for raw in strings(f, "addresses"))
    if "ports" in f:
        svc.ports.extend(ports(f["ports"]))
    svc.subject_alt_names.extend(strings(f, "subject_alt_names"))
    if "waypoint" in f:
        svc.waypoint.CopyFrom(gateway(f["waypoint"]))
    if "load_balancing" in f:
        lb = fields(f["load_balancing"], {"mode", "routing_preference", "health_policy"}, "loadBalancing")
        if "mode" in lb:
            svc.load_balancing.mode = enum(lb["mode"], wl.LoadBalancing.Mode, "mode")  # type: ignore[assignment]
        if "health_policy" in lb:
            svc.load_balancing.health_policy = enum(lb["health_policy"], wl.LoadBalancing.HealthPolicy, "policy")  # type: ignore[assignment]
        for i, _ in enumerate(strings(lb, "routing_preference")):
            scope = enum(lb["routing_preference"].child(i), wl.LoadBalancing.Scope, "scope")
            svc.load_balancing.routing_preference.append(scope)
    if "ip_families" in f:
        svc.ip_families = enum(f["ip_families"], wl.IPFamilies, "ipFamilies")  # type: ignore[assignment]
    if "visibility" in f:
        svc.visibility = enum(f["visibility"], wl.Service.Visibility, "visibility")  # type: ignore[assignment]
    svc.canonical = bool(f["canonical"].value) if "canonical" in f else False
    svc.ingress_use_waypoint = bool(f["ingress_use_waypoint"].value) if "ingress_use_waypoint" in f else False
    return _Service(item, svc, strings(f, "workloads"))


def build_workload(item: Located) -> _Workload:
    f = fields(item, _WORKLOAD_KEYS, "workload")
    name = text(f, "name")
    if not name:
        raise item.error("a workload needs a name")
    ns = text(f, "namespace", DEFAULT_NAMESPACE)
    w = wl.Workload(name=name, namespace=ns, uid=text(f, "uid", f"Kubernetes//Pod/{ns}/{name}"))
    w.trust_domain, w.service_account = text(f, "trust_domain"), text(f, "service_account")
    if "identity" in f:
        try:
            sid = SpiffeId.parse_istio(text(f, "identity"))
        except IdentityError as exc:
            raise f["identity"].error(str(exc)) from None
        if "namespace" in f and sid.namespace != ns:
            raise f["identity"].error(f"identity namespace {sid.namespace!r} differs from the workload's {ns!r}")
        w.namespace = sid.namespace or ns
        w.trust_domain, w.service_account = sid.trust_domain, sid.service_account or ""
        if "uid" not in f:
            w.uid = f"Kubernetes//Pod/{w.namespace}/{name}"
    w.addresses.extend(ip_bytes(f["addresses"], a) for a in strings(f, "addresses"))
    w.hostname = text(f, "hostname")
    if not w.addresses and not w.hostname:
        raise item.error(f"workload {name!r} needs addresses or a hostname")
    w.network, w.node, w.cluster_id = text(f, "network"), text(f, "node"), text(f, "cluster_id")
    w.canonical_name = text(f, "canonical_name", name)
    w.canonical_revision = text(f, "canonical_revision", "latest")
    w.workload_name = text(f, "workload_name", name)
    proto = f.get("tunnel_protocol") or f.get("protocol")
    w.tunnel_protocol = enum(proto, wl.TunnelProtocol, "tunnel protocol") if proto else wl.HBONE  # type: ignore[assignment]
    for key, enum_type in (("workload_type", wl.WorkloadType), ("status", wl.WorkloadStatus)):
        if key in f:
            setattr(w, key, enum(f[key], enum_type, key))
    if "network_mode" in f:
        w.network_mode = enum(f["network_mode"], wl.NetworkMode, "network mode")  # type: ignore[assignment]
    if "locality" in f:
        loc = f["locality"]
        parts = str(loc.value).split("/") if isinstance(loc.value, str) else None
        lf = fields(loc, {"region", "zone", "subzone"}, "locality") if parts is None else {}
        region, zone, subzone = [*parts, "", ""][:3] if parts else [text(lf, k) for k in ("region", "zone", "subzone")]
        w.locality.CopyFrom(wl.Locality(region=region, zone=zone, subzone=subzone))
    for key in ("waypoint", "network_gateway"):
        if key in f:
            getattr(w, key).CopyFrom(gateway(f[key]))
    if "application_tunnel" in f:
        at = fields(f["application_tunnel"], {"protocol", "port"}, "applicationTunnel")
        if "protocol" in at:
            w.application_tunnel.protocol = enum(at["protocol"], wl.ApplicationTunnel.Protocol, "protocol")  # type: ignore[assignment]
        w.application_tunnel.port = _port_number(at["port"]) if "port" in at else 0
    if "capacity" in f:
        w.capacity.value = _port_number(f["capacity"]) if f["capacity"].value else 0
    w.native_tunnel = bool(f["native_tunnel"].value) if "native_tunnel" in f else False
    w.authorization_policies.extend(strings(f, "policies"))
    labels_loc = f.get("labels")
    if labels_loc is not None and not isinstance(labels_loc.value, dict):
        raise labels_loc.error("labels must be a mapping")
    labels = {str(k): str(v) for k, v in (labels_loc.value or {}).items()} if labels_loc else {}
    return _Workload(item, w, labels, strings(f, "services"))


def _resolve(ref: str, ns: str, by_name: dict[tuple[str, str], Any], what: str, item: Located) -> Any:
    ref_ns, _, name = ref.rpartition("/")
    found = by_name.get((ref_ns or ns, name))
    if found is None:
        raise item.error(f"unknown {what} {ref!r}")
    return found


def build_ambient(
    workloads: Iterable[Located], services: Iterable[Located], policies: Iterable[Located], *, root_namespace: str
) -> tuple[list[tuple[str, Any, Located]], list[str]]:
    """Convert shorthand items into (type_url, message, origin) triples, plus warnings (`file:line: text`)."""
    svcs = [build_service(s) for s in services]
    wls = [build_workload(w) for w in workloads]
    svc_by: dict[tuple[str, str], _Service] = {}
    for s in svcs:
        svc_by[(s.msg.namespace, s.msg.name)] = svc_by[(s.msg.namespace, s.msg.hostname)] = s
    wl_by = {(w.msg.namespace, w.msg.name): w for w in wls}

    def attach(w: _Workload, s: _Service) -> None:
        w.msg.services[s.key].ports.extend(p for p in s.msg.ports if p not in w.msg.services[s.key].ports)

    for s in svcs:
        for ref in s.workload_refs:
            attach(_resolve(ref, s.msg.namespace, wl_by, "workload", s.item), s)
    for w in wls:
        for ref in w.service_refs:
            attach(w, _resolve(ref, w.msg.namespace, svc_by, "service", w.item))

    out: list[tuple[str, Any, Located]] = []
    warnings: list[str] = []
    for item in policies:
        pol, selector, warns = convert_policy(item, root_namespace=root_namespace)
        warnings.extend(warns)
        key = f"{pol.namespace}/{pol.name}"
        for w in wls:
            selected = policy_selects(selector, pol.namespace, root_namespace, w.msg, w.labels)
            if selected and key not in w.msg.authorization_policies:
                w.msg.authorization_policies.append(key)
        out.append((resources.AUTHORIZATION, pol, item))
    for w in wls:
        out.append((resources.ADDRESS, wl.Address(workload=w.msg), w.item))
    for s in svcs:
        out.append((resources.ADDRESS, wl.Address(service=s.msg), s.item))
    return out, warnings
