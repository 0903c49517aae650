"""Per-client, per-type xDS status: the source for CSDS and Prometheus metrics.

Istio keeps `LastError` and reject metrics per connection (`pilot/pkg/xds/monitoring.go`); go-control-plane has no
NACK awareness at all (#582). Here every stream owns a `ClientStatus` that its handler updates on each send, ACK,
NACK and stale request; `StatusRegistry.client_status_response()` turns the connected clients into an
`envoy.service.status.v3.ClientStatusResponse` (CSDS `generic_xds_configs`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from microxds.cache.types import CacheWatch
from microxds.server.subscription import Subscription

_ACKED = config_dump_shared_pb2.ClientResourceStatus.ACKED
_NACKED = config_dump_shared_pb2.ClientResourceStatus.NACKED
_REQUESTED = config_dump_shared_pb2.ClientResourceStatus.REQUESTED


class XdsMetrics:
    """Prometheus metrics, registered on the registry passed in (never the global one at import time)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "microxds") -> None:
        self.pushes = Counter(f"{prefix}_xds_pushes", "xDS responses sent", ["type"], registry=registry)
        self.pushed_resources = Counter(
            f"{prefix}_xds_pushed_resources",
            "Resources (and removals) carried by xDS responses",
            ["type"],
            registry=registry,
        )
        self.nacks = Counter(f"{prefix}_xds_nacks", "xDS responses rejected by clients", ["type"], registry=registry)
        self.stale_nonces = Counter(
            f"{prefix}_xds_expired_nonce", "Requests ignored because their nonce was stale", ["type"], registry=registry
        )
        self.clients = Gauge(f"{prefix}_xds_clients", "Connected xDS streams", ["protocol"], registry=registry)
        self.resumes = Counter(
            f"{prefix}_xds_resumed",
            "Types a reconnecting client already held in full (SotW version_info matched): nothing sent",
            ["type"],
            registry=registry,
        )
        self.heartbeats = Counter(
            f"{prefix}_xds_heartbeats", "TTL heartbeats sent (resources without a body)", ["type"], registry=registry
        )


@dataclass(slots=True)
class Nack:
    version: str  # the version the client rejected (what we last sent)
    nonce: str
    message: str
    at: float  # wall-clock seconds


class TypeStatus:
    __slots__ = (
        "ack_count",
        "acked_nonce",
        "acked_version",
        "nack",
        "nack_count",
        "sent_count",
        "sent_nonce",
        "sent_version",
        "stale_count",
        "subscription",
    )

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription  # live: requested names and name -> version the client holds
        self.sent_version = ""
        self.sent_nonce = ""
        self.acked_version = ""
        self.acked_nonce = ""
        self.nack: Nack | None = None
        self.sent_count = self.ack_count = self.nack_count = self.stale_count = 0

    @property
    def nacked(self) -> bool:
        """True while the latest response we sent is the one the client rejected."""
        return self.nack is not None and self.nack.nonce == self.sent_nonce


class ClientStatus:
    """One connected stream. Handlers call `sent/acked/nacked/stale`; readers use the attributes."""

    __slots__ = ("_metrics", "connected_at", "node", "peer", "protocol", "stream_id", "types", "watch")

    def __init__(self, stream_id: int, peer: str, protocol: str, metrics: XdsMetrics | None) -> None:
        self.stream_id = stream_id
        self.peer = peer
        self.protocol = protocol
        self.node: base_pb2.Node | None = None
        self.watch: CacheWatch | None = None
        self.connected_at = time.time()
        self.types: dict[str, TypeStatus] = {}
        self._metrics = metrics

    def track(self, type_url: str, subscription: Subscription) -> TypeStatus:
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = TypeStatus(subscription)
        return st

    def sent(self, type_url: str, version: str, nonce: str, count: int) -> None:
        st = self.types[type_url]
        st.sent_version, st.sent_nonce = version, nonce
        st.sent_count += 1
        if self._metrics is not None:
            self._metrics.pushes.labels(type_url).inc()
            self._metrics.pushed_resources.labels(type_url).inc(count)

    def heartbeat(self, type_url: str, version: str, nonce: str, count: int) -> None:
        """A heartbeat response went out: it has a nonce to ACK, but carries no resource."""
        st = self.types[type_url]
        st.sent_version, st.sent_nonce = version, nonce
        if self._metrics is not None:
            self._metrics.heartbeats.labels(type_url).inc(count)

    def resumed(self, type_url: str, version: str) -> None:
        """A reconnecting SotW client already holds `version`: nothing was sent, and it counts as acknowledged."""
        st = self.types[type_url]
        st.acked_version = st.sent_version = version
        if self._metrics is not None:
            self._metrics.resumes.labels(type_url).inc()

    def acked(self, type_url: str, version: str, nonce: str) -> None:
        st = self.types[type_url]
        st.acked_version, st.acked_nonce = version, nonce
        st.ack_count += 1

    def nacked(self, type_url: str, version: str, nonce: str, message: str) -> None:
        st = self.types[type_url]
        st.nack = Nack(version, nonce, message, time.time())
        st.nack_count += 1
        if self._metrics is not None:
            self._metrics.nacks.labels(type_url).inc()

    def stale(self, type_url: str) -> None:
        st = self.types.get(type_url)
        if st is not None:
            st.stale_count += 1
        if self._metrics is not None:
            self._metrics.stale_nonces.labels(type_url).inc()

    def generic_xds_configs(self, include_resources: bool = False) -> Iterator[csds_pb2.ClientConfig.GenericXdsConfig]:
        for type_url, st in self.types.items():
            if st.nacked and st.nack is not None:
                config_status, client_status = csds_pb2.ERROR, _NACKED
            elif st.acked_nonce == st.sent_nonce and st.sent_nonce:
                config_status, client_status = csds_pb2.SYNCED, _ACKED
            else:
                config_status, client_status = csds_pb2.STALE, _REQUESTED
            sub = st.subscription
            resources = self.watch.resources(type_url) if include_resources and self.watch is not None else None
            for name, version in sub.sent.items():
                cfg = csds_pb2.ClientConfig.GenericXdsConfig(
                    type_url=type_url,
                    name=name,
                    version_info=version,
                    config_status=config_status,
                    client_status=client_status,
                )
                if st.nack is not None and client_status == _NACKED:
                    cfg.error_state.details = st.nack.message
                    cfg.error_state.version_info = st.nack.version
                    cfg.error_state.last_update_attempt.FromNanoseconds(int(st.nack.at * 1e9))
                if resources is not None and (res := resources.get(name)) is not None and res.version == version:
                    cfg.xds_config.CopyFrom(res.to_any())
                yield cfg
            for name in sorted(n for n in sub.names if n not in sub.sent):  # requested but never sent: NOT_SENT
                yield csds_pb2.ClientConfig.GenericXdsConfig(
                    type_url=type_url, name=name, config_status=csds_pb2.NOT_SENT, client_status=_REQUESTED
                )


class StatusRegistry:
    """All connected streams. One per server; pass `metrics` to export counters and the client gauge."""

    def __init__(self, metrics: XdsMetrics | None = None) -> None:
        self.metrics = metrics
        self._clients: dict[int, ClientStatus] = {}
        self._ids = itertools.count(1)

    def open(self, peer: str = "", protocol: str = "sotw") -> ClientStatus:
        client = ClientStatus(next(self._ids), peer, protocol, self.metrics)
        self._clients[client.stream_id] = client
        if self.metrics is not None:
            self.metrics.clients.labels(protocol).inc()
        return client

    def close(self, client: ClientStatus) -> None:
        if self._clients.pop(client.stream_id, None) is not None and self.metrics is not None:
            self.metrics.clients.labels(client.protocol).dec()

    def clients(self) -> list[ClientStatus]:
        return list(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def client_status_response(
        self,
        match: Callable[[base_pb2.Node], bool] | None = None,
        *,
        include_resources: bool = False,
    ) -> csds_pb2.ClientStatusResponse:
        """CSDS answer for the connected clients whose node passes `match` (all by default)."""
        resp = csds_pb2.ClientStatusResponse()
        for client in self._clients.values():
            node = client.node if client.node is not None else base_pb2.Node()
            if match is not None and not match(node):
                continue
            config = resp.config.add()
            config.node.CopyFrom(node)
            config.generic_xds_configs.extend(client.generic_xds_configs(include_resources))
        return resp
