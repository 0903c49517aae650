"""Istio xDS protobuf → hbone domain types: the one place this direction is converted (DESIGN §2).

`address_to_domain` handles `istio.workload.Address` (a Workload or a Service), `authorization_to_domain` handles
`istio.security.Authorization`. Each accepts a message or its serialised bytes (`Resource.value`, an Any's value).
A malformed resource raises ResourceError naming the field, so the caller can reject that one resource and NACK it
while applying the rest (xDS rule: bad resources are rejected one by one).
"""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

from google.protobuf.message import DecodeError

from hbone.authz import model as az
from hbone.state import model as st

from .._pb.istio.security import authorization_pb2 as authz_pb
from .._pb.istio.workload import workload_pb2 as wl_pb
from ..errors import ResourceError
from ..resources import ADDRESS, AUTHORIZATION

E = TypeVar("E")


def _enum(kind: Any, value: int, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ResourceError(f"{what}: unknown enum value {value}") from None


def _ip(raw: bytes, what: str) -> az.IPAddress:
    if len(raw) not in (4, 16):
        raise ResourceError(f"{what}: {len(raw)} bytes is not an IPv4 or IPv6 address")
    return ipaddress.ip_address(bytes(raw))


def _network_address(na: wl_pb.NetworkAddress, what: str) -> st.NetworkAddress:
    return st.NetworkAddress(
        network=na.network, address=_ip(na.address, what), length=na.length if na.HasField("length") else None
    )


def _gateway(msg: Any, field: str) -> st.GatewayAddress | None:
    if not msg.HasField(field):
        return None
    gw: wl_pb.GatewayAddress = getattr(msg, field)
    kind = gw.WhichOneof("destination")
    dest: st.NamespacedHostname | st.NetworkAddress
    if kind == "hostname":
        dest = st.NamespacedHostname(gw.hostname.namespace, gw.hostname.hostname)
    elif kind == "address":
        dest = _network_address(gw.address, f"{field}.address")
    else:
        raise ResourceError(f"{field}: neither hostname nor address is set")
    return st.GatewayAddress(dest, gw.hbone_mtls_port or st.HBONE_MTLS_PORT)


def _ports(ports: Any) -> tuple[st.Port, ...]:
    return tuple(
        st.Port(p.service_port, p.target_port, _enum(st.AppProtocol, p.app_protocol, "app_protocol")) for p in ports
    )


def workload_to_domain(w: wl_pb.Workload) -> st.Workload:
    app_tunnel = None
    if w.HasField("application_tunnel"):
        app_tunnel = st.ApplicationTunnel(
            _enum(st.TunnelApplicationProtocol, w.application_tunnel.protocol, "application_tunnel.protocol"),
            w.application_tunnel.port,
        )
    return st.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        trust_domain=w.trust_domain or st.DEFAULT_TRUST_DOMAIN,
        service_account=w.service_account or st.DEFAULT_SERVICE_ACCOUNT,
        addresses=tuple(_ip(a, "addresses") for a in w.addresses),
        hostname=w.hostname,
        network=w.network,
        network_mode=_enum(st.NetworkMode, w.network_mode, "network_mode"),
        tunnel_protocol=_enum(st.TunnelProtocol, w.tunnel_protocol, "tunnel_protocol"),
        waypoint=_gateway(w, "waypoint"),
        network_gateway=_gateway(w, "network_gateway"),
        native_tunnel=w.native_tunnel,
        application_tunnel=app_tunnel,
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=_enum(st.WorkloadType, w.workload_type, "workload_type"),
        workload_name=w.workload_name,
        cluster_id=w.cluster_id,
        locality=st.Locality(w.locality.region, w.locality.zone, w.locality.subzone),
        services={key: _ports(pl.ports) for key, pl in sorted(w.services.items())},
        authorization_policies=tuple(w.authorization_policies),
        status=_enum(st.WorkloadStatus, w.status, "status"),
        capacity=w.capacity.value if w.HasField("capacity") else None,
    )


def service_to_domain(s: wl_pb.Service) -> st.Service:
    lb = None
    if s.HasField("load_balancing"):
        lb = st.LoadBalancing(
            routing_preference=tuple(
                _enum(st.LbScope, v, "routing_preference") for v in s.load_balancing.routing_preference
            ),
            mode=_enum(st.LbMode, s.load_balancing.mode, "load_balancing.mode"),
            health_policy=_enum(st.HealthPolicy, s.load_balancing.health_policy, "load_balancing.health_policy"),
        )
    return st.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=tuple(_network_address(a, "addresses") for a in s.addresses),
        ports=_ports(s.ports),
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=_gateway(s, "waypoint"),
        load_balancing=lb,
        ip_families=_enum(st.IPFamilies, s.ip_families, "ip_families"),
    )


def address_to_domain(message: wl_pb.Address | bytes) -> st.Workload | st.Service:
    """An `istio.workload.Address` resource → Workload or Service."""
    msg = _decode(wl_pb.Address, message, ADDRESS)
    kind = msg.WhichOneof("type")
    try:
        if kind == "workload":
            return workload_to_domain(msg.workload)
        if kind == "service":
            return service_to_domain(msg.service)
    except ResourceError as exc:
        name = msg.workload.uid if kind == "workload" else f"{msg.service.namespace}/{msg.service.hostname}"
        raise ResourceError(f"{kind}: {exc.reason}", type_url=ADDRESS, name=name) from None
    raise ResourceError("Address has neither a workload nor a service", type_url=ADDRESS)


# --- authorization ----------------------------------------------------------------------------------------------


def _string_match(m: authz_pb.StringMatch, what: str) -> az.StringMatch:
    kind = m.WhichOneof("match_type")
    if kind == "exact":
        return az.StringMatch.exact(m.exact)
    if kind == "prefix":
        return az.StringMatch.prefix(m.prefix)
    if kind == "suffix":
        return az.StringMatch.suffix(m.suffix)
    if kind == "presence":
        return az.StringMatch.presence()
    raise ResourceError(f"{what}: StringMatch has no match_type")


def _networks(addrs: Any, what: str) -> tuple[az.IPNetwork, ...]:
    out = []
    for a in addrs:
        ip = _ip(a.address, what)
        try:
            out.append(ipaddress.ip_network(f"{ip}/{a.length}", strict=False))
        except ValueError:
            raise ResourceError(f"{what}: prefix length {a.length} is out of range for {ip}") from None
    return tuple(out)


def _match(m: authz_pb.Match) -> az.Match:
    def strings(field: str) -> tuple[az.StringMatch, ...]:
        return tuple(_string_match(s, field) for s in getattr(m, field))

    def accounts(field: str) -> tuple[az.ServiceAccountMatch, ...]:
        return tuple(az.ServiceAccountMatch(s.namespace, s.serviceAccount) for s in getattr(m, field))

    return az.Match(
        namespaces=strings("namespaces"),
        not_namespaces=strings("not_namespaces"),
        principals=strings("principals"),
        not_principals=strings("not_principals"),
        source_ips=_networks(m.source_ips, "source_ips"),
        not_source_ips=_networks(m.not_source_ips, "not_source_ips"),
        destination_ips=_networks(m.destination_ips, "destination_ips"),
        not_destination_ips=_networks(m.not_destination_ips, "not_destination_ips"),
        destination_ports=tuple(m.destination_ports),
        not_destination_ports=tuple(m.not_destination_ports),
        service_accounts=accounts("service_accounts"),
        not_service_accounts=accounts("not_service_accounts"),
    )


def authorization_to_domain(message: authz_pb.Authorization | bytes) -> az.Policy:
    """An `istio.security.Authorization` resource → Policy."""
    p = _decode(authz_pb.Authorization, message, AUTHORIZATION)
    try:
        return az.Policy(
            name=p.name,
            namespace=p.namespace,
            scope=_enum(az.Scope, p.scope, "scope"),
            action=_enum(az.Action, p.action, "action"),
            rules=tuple(
                az.Rule(tuple(az.Clause(tuple(_match(m) for m in c.matches)) for c in r.clauses)) for r in p.rules
            ),
            dry_run=p.dry_run,
        )
    except ResourceError as exc:
        raise ResourceError(exc.reason, type_url=AUTHORIZATION, name=f"{p.namespace}/{p.name}") from None


def _decode(cls: type[E], message: E | bytes, type_url: str) -> E:
    if not isinstance(message, (bytes, bytearray, memoryview)):
        return message
    try:
        return cls.FromString(bytes(message))  # type: ignore[attr-defined, no-any-return]
    except DecodeError as exc:
        raise ResourceError(f"cannot decode: {exc}", type_url=type_url) from None
