"""xDS resources: type URLs, names, serialise-once values and content-hash versions.

A `Resource` is immutable and holds the serialised message bytes, produced exactly once however many clients
receive it (go-control-plane PR #1324 made the same change for the same reason). Its version is a hash of those
bytes, so two replicas loaded with the same config hand out the same versions and a client that reconnects to
another replica resumes without a re-push.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any as TypingAny

from google.protobuf import any_pb2
from google.protobuf.message import Message

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
VIRTUAL_HOST = PREFIX + "envoy.config.route.v3.VirtualHost"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG = PREFIX + "envoy.config.core.v3.TypedExtensionConfig"
ADDRESS = PREFIX + "istio.workload.Address"
WORKLOAD = PREFIX + "istio.workload.Workload"
AUTHORIZATION = PREFIX + "istio.security.Authorization"

# Istio PushOrder (pilot/pkg/xds/ads.go): make-before-break, clusters warm before listeners reference them.
PUSH_ORDER: tuple[str, ...] = (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    VIRTUAL_HOST,
    SECRET,
    ADDRESS,
    WORKLOAD,
    AUTHORIZATION,
)

# Short names accepted on the command line and in config.
SHORT_NAMES: dict[str, str] = {
    "cds": CLUSTER,
    "lds": LISTENER,
    "rds": ROUTE,
    "eds": ENDPOINT,
    "sds": SECRET,
    "address": ADDRESS,
    "workload": WORKLOAD,
    "authorization": AUTHORIZATION,
}


def type_url_of(message: Message) -> str:
    return PREFIX + str(message.DESCRIPTOR.full_name)


def resolve_type(name: str) -> str:
    """Map a short name (`cds`) or a full type URL to the full type URL."""
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name.startswith(PREFIX):
        return name
    raise ValueError(f"unknown resource type {name!r}; use one of {', '.join(SHORT_NAMES)} or a full type URL")


def _address_name(m: TypingAny) -> str:
    # istio.workload.Address: a workload is keyed by uid, a service by "namespace/hostname" (workload.proto).
    if m.WhichOneof("type") == "service":
        return f"{m.service.namespace}/{m.service.hostname}"
    return str(m.workload.uid)


# How each type names its resources. Types not listed here use the message's `name` field.
_NAMERS: dict[str, Callable[[TypingAny], str]] = {
    ENDPOINT: lambda m: str(m.cluster_name),
    ADDRESS: _address_name,
    WORKLOAD: lambda m: str(m.uid),
    AUTHORIZATION: lambda m: f"{m.namespace}/{m.name}",
}


def address_aliases(message: TypingAny) -> tuple[str, ...]:
    """The secondary keys of an istio.workload.Address (or Workload): "network/IP" for each address.

    ztunnel looks workloads and services up on demand by these aliases (workload.proto, `Address`).
    """
    import ipaddress

    if message.DESCRIPTOR.full_name == "istio.workload.Address":
        kind = message.WhichOneof("type")
        if kind is None:
            return ()
        message = getattr(message, kind)
    if message.DESCRIPTOR.full_name == "istio.workload.Service":
        pairs = [(a.network, a.address) for a in message.addresses]
    else:
        pairs = [(message.network, a) for a in message.addresses]
    out: list[str] = []
    for network, raw in pairs:
        if len(raw) in (4, 16):
            out.append(f"{network}/{ipaddress.ip_address(bytes(raw))}")
    return tuple(out)


def register_namer(type_url: str, namer: Callable[[TypingAny], str]) -> None:
    """Teach the registry how to name a type whose name is not a plain `name` field (Istio Address, ...)."""
    _NAMERS[type_url] = namer


def resource_name(message: Message, type_url: str | None = None) -> str:
    url = type_url or type_url_of(message)
    namer = _NAMERS.get(url)
    if namer is not None:
        return namer(message)
    if "name" not in message.DESCRIPTOR.fields_by_name:
        raise ValueError(f"no naming rule for {url}: register one with register_namer()")
    return str(getattr(message, "name"))  # noqa: B009 - protobuf fields are dynamic


def content_version(value: bytes) -> str:
    """A short, stable version derived from the serialised bytes (identical across replicas)."""
    return hashlib.sha256(value).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Resource:
    """One serialised xDS resource. Build with `Resource.of(message)`."""

    type_url: str
    name: str
    value: bytes  # the serialised message, i.e. Any.value
    version: str
    aliases: tuple[str, ...] = ()
    ttl: float | None = None
    """Seconds a client may keep this resource without hearing of it again (xDS `Resource.ttl`); None = forever."""
    _any: list[any_pb2.Any] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        message: Message,
        *,
        type_url: str | None = None,
        name: str | None = None,
        aliases: tuple[str, ...] = (),
        ttl: float | None = None,
    ) -> Resource:
        url = type_url or type_url_of(message)
        # deterministic=True keeps map ordering stable so equal configs hash equally.
        value = message.SerializeToString(deterministic=True)
        # A new TTL is a new version too, so clients are told the new lifetime (still equal on every replica).
        version = content_version(value if ttl is None else value + f"\0ttl={ttl!r}".encode())
        return cls(url, name if name is not None else resource_name(message, url), value, version, aliases, ttl)

    def to_any(self) -> any_pb2.Any:
        """The packed Any, built once and shared (callers must not mutate it)."""
        if not self._any:
            self._any.append(any_pb2.Any(type_url=self.type_url, value=self.value))
        return self._any[0]
