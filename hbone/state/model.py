"""Ambient mesh domain types, mirroring `istio.workload` (docs/istio.md §2) field for field.

No protobuf here: `microxds.istio.convert` builds these from `istio.workload.Address`, config files build them
directly. Enum values are the proto numbers where the reference gives them; convert by name otherwise. Validation
is separate (`validate_*`) so that the store can reject bad items one by one, xDS style, naming each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NoReturn

from hbone.authz.model import IPAddress, Policy
from hbone.errors import IdentityError
from hbone.identity.spiffe import SpiffeId
from hbone.wire.baggage import PeerMetadata

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
HBONE_MTLS_PORT = 15008


class TunnelProtocol(enum.IntEnum):
    NONE = 0
    HBONE = 1
    LEGACY_ISTIO_MTLS = 2  # ztunnel rejects it; so does `validate_workload`


class WorkloadStatus(enum.IntEnum):
    HEALTHY = 0
    UNHEALTHY = 1


class WorkloadType(enum.IntEnum):
    DEPLOYMENT = 0
    CRONJOB = 1
    POD = 2
    JOB = 3


class NetworkMode(enum.IntEnum):
    STANDARD = 0
    HOST_NETWORK = 1


class AppProtocol(enum.IntEnum):
    UNKNOWN = 0
    HTTP11 = 1
    HTTP2 = 2
    GRPC = 3
    TCP = 4
    TLS = 5


class IPFamilies(enum.IntEnum):
    AUTOMATIC = 0
    IPV4_ONLY = 1
    IPV6_ONLY = 2
    DUAL = 3


class TunnelApplicationProtocol(enum.IntEnum):
    """`ApplicationTunnel.Protocol`."""

    NONE = 0
    PROXY = 1


class LbScope(enum.IntEnum):
    """`LoadBalancing.Scope`: the locality attributes a routing preference compares."""

    UNSPECIFIED_SCOPE = 0
    REGION = 1
    ZONE = 2
    SUBZONE = 3
    NODE = 4
    CLUSTER = 5
    NETWORK = 6


class LbMode(enum.IntEnum):
    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class HealthPolicy(enum.IntEnum):
    ONLY_HEALTHY = 0
    ALLOW_ALL = 1


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    """An IP on a network ("" is the default network); `length` makes it a CIDR (2026 addition)."""

    network: str
    address: IPAddress
    length: int | None = None


@dataclass(frozen=True, slots=True)
class NamespacedHostname:
    namespace: str
    hostname: str


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A waypoint or network gateway: a service by hostname or a plain address, reached on `hbone_mtls_port`."""

    destination: NamespacedHostname | NetworkAddress
    hbone_mtls_port: int = HBONE_MTLS_PORT


@dataclass(frozen=True, slots=True)
class Port:
    """`target_port` 0 means a named port, resolved per endpoint through `Workload.services`."""

    service_port: int
    target_port: int = 0
    app_protocol: AppProtocol = AppProtocol.UNKNOWN


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class ApplicationTunnel:
    protocol: TunnelApplicationProtocol = TunnelApplicationProtocol.NONE
    port: int = 0


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    routing_preference: tuple[LbScope, ...] = ()
    mode: LbMode = LbMode.UNSPECIFIED_MODE
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


class FrozenPortMap(dict[str, tuple[Port, ...]]):
    """A read-only dict (`Workload.services`). A dict subclass rather than a MappingProxyType so that pickle,
    `copy` and `dataclasses.asdict` (config dumps) keep working."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("Workload.services is read-only; build a new Workload instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[type[FrozenPortMap], tuple[dict[str, tuple[Port, ...]]]]:
        return (type(self), (dict(self),))


def _frozen_services(value: Mapping[str, tuple[Port, ...]]) -> FrozenPortMap:
    return value if isinstance(value, FrozenPortMap) else FrozenPortMap({k: tuple(v) for k, v in value.items()})


@dataclass(frozen=True)
class Workload:
    """`istio.workload.Workload`. Resource name: `uid`. `services` maps `ns/hostname` → ports of this endpoint."""

    uid: str
    name: str
    namespace: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    addresses: tuple[IPAddress, ...] = ()
    hostname: str = ""
    network: str = ""
    network_mode: NetworkMode = NetworkMode.STANDARD
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    native_tunnel: bool = False
    application_tunnel: ApplicationTunnel | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: WorkloadType = WorkloadType.DEPLOYMENT
    workload_name: str = ""
    cluster_id: str = ""
    locality: Locality = field(default_factory=Locality)
    services: Mapping[str, tuple[Port, ...]] = field(default_factory=dict, hash=False)
    authorization_policies: tuple[str, ...] = ()
    status: WorkloadStatus = WorkloadStatus.HEALTHY
    capacity: int | None = None

    def __post_init__(self) -> None:
        # read-only copy: a Workload is shared by every snapshot that contains it
        object.__setattr__(self, "services", _frozen_services(self.services))

    @cached_property
    def identity(self) -> SpiffeId:
        """`spiffe://<td>/ns/<ns>/sa/<sa>`; empty trust domain / service account: the defaults."""
        return SpiffeId.istio(
            self.trust_domain or DEFAULT_TRUST_DOMAIN,
            self.namespace,
            self.service_account or DEFAULT_SERVICE_ACCOUNT,
        )

    @property
    def healthy(self) -> bool:
        return self.status is WorkloadStatus.HEALTHY

    def peer_metadata(self) -> PeerMetadata:
        """What a proxy sending for this workload puts in `baggage` (ztunnel src/baggage.rs)."""
        return PeerMetadata(
            cluster=self.cluster_id, namespace=self.namespace, workload_name=self.workload_name or self.name,
            service_name=self.canonical_name, service_version=self.canonical_revision,
            region=self.locality.region, zone=self.locality.zone,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Service:
    """`istio.workload.Service`. Resource name: `<namespace>/<hostname>`."""

    name: str
    namespace: str
    hostname: str
    addresses: tuple[NetworkAddress, ...] = ()
    ports: tuple[Port, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None
    ip_families: IPFamilies = IPFamilies.AUTOMATIC

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

    def port(self, service_port: int) -> Port | None:
        for p in self.ports:
            if p.service_port == service_port:
                return p
        return None


# --- validation: each returns the problems, empty when the item is acceptable --------------------------------------


def _check_port(value: int, what: str, *, allow_zero: bool) -> list[str]:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        return [f"{what} {value!r} is not a port number ({low}-65535)"]
    return []


def _check_ports(ports: tuple[Port, ...], where: str) -> list[str]:
    problems: list[str] = []
    for p in ports:
        problems += _check_port(p.service_port, f"{where} service_port", allow_zero=False)
        problems += _check_port(p.target_port, f"{where} target_port", allow_zero=True)
    return problems


def _check_gateway(gw: GatewayAddress | None, what: str) -> list[str]:
    if gw is None:
        return []
    problems = _check_port(gw.hbone_mtls_port, f"{what} hbone_mtls_port", allow_zero=False)
    dest = gw.destination
    if isinstance(dest, NamespacedHostname) and not (dest.namespace and dest.hostname):
        problems.append(f"{what} hostname needs both namespace and hostname")
    return problems


def validate_workload(w: Workload) -> list[str]:
    problems: list[str] = []
    if not w.uid:
        problems.append("uid is empty")
    if not w.name or not w.namespace:
        problems.append("name and namespace must be non-empty")
    else:
        try:
            _ = w.identity
        except IdentityError as e:
            problems.append(f"no valid identity: {e}")
    if w.tunnel_protocol is TunnelProtocol.LEGACY_ISTIO_MTLS:
        problems.append("tunnel_protocol LEGACY_ISTIO_MTLS is not supported")
    for a in w.addresses:
        if not isinstance(a, IPAddress):
            problems.append(f"address {a!r} is not an IP address")
    for key, ports in w.services.items():
        ns, slash, host = key.partition("/")
        if not (ns and slash and host):
            problems.append(f"services key {key!r} is not <namespace>/<hostname>")
        problems += _check_ports(ports, f"services[{key!r}]")
    problems += _check_gateway(w.waypoint, "waypoint")
    problems += _check_gateway(w.network_gateway, "network_gateway")
    return problems


def validate_service(s: Service) -> list[str]:
    problems: list[str] = []
    if not s.namespace or not s.hostname:
        problems.append("namespace and hostname must be non-empty")
    for a in s.addresses:
        if not isinstance(a.address, IPAddress):
            problems.append(f"address {a.address!r} is not an IP address")
        elif a.length is not None and not 0 <= a.length <= a.address.max_prefixlen:
            problems.append(f"address {a.address}/{a.length}: prefix length out of range")
    problems += _check_ports(s.ports, "port")
    problems += _check_gateway(s.waypoint, "waypoint")
    return problems


def validate_policy(p: Policy) -> list[str]:
    problems: list[str] = []
    if not p.name or not p.namespace:
        problems.append("name and namespace must be non-empty")
    for rule in p.rules:
        for clause in rule.clauses:
            for m in clause.matches:
                for port in (*m.destination_ports, *m.not_destination_ports):
                    problems += _check_port(port, "destination port", allow_zero=True)
    return problems
