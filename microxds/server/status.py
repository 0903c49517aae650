"""Per-client, per-type xDS status: the source for CSDS and Prometheus metrics.

Istio keeps `LastError` and reject metrics per connection (`pilot/pkg/xds/monitoring.go`); go-control-plane has no
NACK awareness at all (#582). Here every stream owns a `ClientStatus` that its handler updates on each send, ACK,
NACK and stale request; `StatusRegistry.client_status_response()` turns the connected clients into an
`envoy.service.status.v3.ClientStatusResponse` (CSDS `generic_xds_configs`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from microxds.cache.types import CacheWatch
from microxds.server.subscription import Subscription

_ACKED = config_dump_shared_pb2.ClientResourceStatus.ACKED
_NACKED = config_dump_shared_pb2.ClientResourceStatus.NACKED
_REQUESTED = config_dump_shared_pb2.ClientResourceStatus.REQUESTED
_GONE = config_dump_shared_pb2.ClientResourceStatus.DOES_NOT_EXIST

log = logging.getLogger("microxds.xds")

# istiod's short type names for its metric labels (pilot/pkg/xds/monitoring.go); other types use their last segment.
_SHORT = {"Cluster": "cds", "ClusterLoadAssignment": "eds", "Listener": "lds", "RouteConfiguration": "rds",
          "Secret": "sds", "Address": "wds", "Authorization": "wds-authorization"}  # fmt: skip
_BUCKETS = (0.01, 0.1, 0.5, 1, 3, 5, 10, 20, 30)  # istiod's push-time buckets, seconds


def short_type(type_url: str) -> str:
    tail = type_url.rsplit(".", 1)[-1]
    return _SHORT.get(tail, tail)


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
        # istiod's names (pilot/pkg/xds/monitoring.go), so its dashboards and alerts work unchanged.
        self.pilot_xds = Gauge("pilot_xds", "Number of endpoints connected to this pilot using XDS", registry=registry)
        self.pilot_pushes = Counter("pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.",
                                    ["type"], registry=registry)  # fmt: skip
        self.pilot_rejects = Counter("pilot_total_xds_rejects", "Total number of XDS responses from pilot rejected "
                                     "by proxy.", ["type"], registry=registry)  # fmt: skip
        self.pilot_push_time = Histogram("pilot_xds_push_time", "Seconds from a config change to its push being "
                                         "sent, per type", ["type"], buckets=_BUCKETS, registry=registry)  # fmt: skip
        self.pilot_convergence = Histogram("pilot_proxy_convergence_time", "Seconds from a config change to the "
                                           "proxy ACKing it", buckets=_BUCKETS, registry=registry)  # fmt: skip


@dataclass(slots=True)
class Nack:
    version: str  # the version the client rejected (what we last sent)
    nonce: str
    message: str
    at: float  # wall-clock seconds


class TypeStatus:
    __slots__ = (
        "ack_count",
        "acked_at",
        "acked_nonce",
        "acked_version",
        "changed_at",
        "nack",
        "nack_count",
        "pushed_change_at",
        "sent_at",
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
        self.sent_at = self.acked_at = 0.0  # wall clock of the last response sent / ACK received
        self.changed_at: float | None = None  # monotonic: first config change not pushed yet
        self.pushed_change_at: float | None = None  # monotonic: the change carried by the push awaiting its ACK

    @property
    def nacked(self) -> bool:
        """True while the latest response we sent is the one the client rejected."""
        return self.nack is not None and self.nack.nonce == self.sent_nonce


class ClientStatus:
    """One connected stream. Handlers call `sent/acked/nacked/stale`; readers use the attributes."""

    __slots__ = ("_metrics", "address", "connected_at", "identity", "node", "peer", "protocol", "stream_id", "types",
                 "watch")  # fmt: skip

    def __init__(self, stream_id: int, peer: str, protocol: str, metrics: XdsMetrics | None) -> None:
        self.stream_id = stream_id
        self.peer = peer
        self.protocol = protocol
        self.identity: str | None = None  # verified SPIFFE id or JWT subject of the caller
        self.address: str | None = None
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

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    def connected(self) -> None:
        """The stream's first request arrived (its node is known): one INFO line."""
        log.info("xds connect: node=%s %s peer=%s identity=%s", self.node_id or "-", self.protocol,
                 self.address or self.peer, self.identity or "-")  # fmt: skip

    def changed(self, type_url: str) -> None:
        """The cache changed resources of a subscribed type (the clock of push and convergence time starts)."""
        st = self.types.get(type_url)
        if st is not None and st.changed_at is None:
            st.changed_at = time.monotonic()

    def sent(self, type_url: str, version: str, nonce: str, count: int) -> None:
        st = self.types[type_url]
        st.sent_version, st.sent_nonce = version, nonce
        st.sent_count += 1
        st.sent_at = time.time()
        if st.changed_at is not None:
            st.pushed_change_at, st.changed_at = st.changed_at, None
        if self._metrics is not None:
            self._metrics.pushes.labels(type_url).inc()
            self._metrics.pushed_resources.labels(type_url).inc(count)
            self._metrics.pilot_pushes.labels(short_type(type_url)).inc()
            if st.pushed_change_at is not None:
                self._metrics.pilot_push_time.labels(short_type(type_url)).observe(
                    time.monotonic() - st.pushed_change_at
                )

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
        st.acked_at = time.time()
        if nonce == st.sent_nonce and st.pushed_change_at is not None:
            if self._metrics is not None:
                self._metrics.pilot_convergence.observe(time.monotonic() - st.pushed_change_at)
            st.pushed_change_at = None

    def nacked(self, type_url: str, version: str, nonce: str, message: str) -> None:
        st = self.types[type_url]
        st.nack = Nack(version, nonce, message, time.time())
        st.nack_count += 1
        st.pushed_change_at = None
        log.info("xds NACK: node=%s type=%s version=%s: %s", self.node_id or "-", type_url, version,
                 " ".join(message.split()))  # fmt: skip
        if self._metrics is not None:
            self._metrics.nacks.labels(type_url).inc()
            self._metrics.pilot_rejects.labels(short_type(type_url)).inc()

    def state(self, type_url: str) -> str:
        """istioctl proxy-status's word for one type: SYNCED, STALE, NACKED or NOT SENT."""
        st = self.types[type_url]
        if st.nacked:
            return "NACKED"
        if not st.sent_nonce:
            return "NOT SENT"
        if st.acked_nonce != st.sent_nonce or self.pending(type_url):
            return "STALE"
        return "SYNCED"

    def pending(self, type_url: str) -> dict[str, tuple[str | None, str | None]]:
        """Resources whose current version differs from what the client holds: name -> (held, current)."""
        st = self.types[type_url]
        if self.watch is None:
            return {}
        sub = st.subscription
        current = {n: r.version for n, r in self.watch.resources(type_url).items() if sub.covers(n)}
        out: dict[str, tuple[str | None, str | None]] = {}
        for name, version in current.items():
            if sub.sent.get(name) != version:
                out[name] = (sub.sent.get(name), version)
        for name in sub.sent:
            if name not in current:
                out[name] = (sub.sent.get(name), None)
        return out

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
            current = self.watch.resources(type_url) if self.watch is not None else {}
            resources = current if include_resources else None
            for name, version in sub.sent.items():
                res_config, res_client = config_status, client_status
                if config_status == csds_pb2.SYNCED and (now := current.get(name)) is None:
                    res_config, res_client = csds_pb2.STALE, _GONE  # removed on the server, not pushed yet
                elif config_status == csds_pb2.SYNCED and now is not None and now.version != version:
                    res_config = csds_pb2.STALE  # changed on the server, not pushed yet
                cfg = csds_pb2.ClientConfig.GenericXdsConfig(
                    type_url=type_url,
                    name=name,
                    version_info=version,
                    config_status=res_config,
                    client_status=res_client,
                )
                if st.nack is not None and client_status == _NACKED:
                    cfg.error_state.details = st.nack.message
                    cfg.error_state.version_info = st.nack.version
                    cfg.error_state.last_update_attempt.FromNanoseconds(int(st.nack.at * 1e9))
                if resources is not None and (res := resources.get(name)) is not None and res.version == version:
                    cfg.xds_config.CopyFrom(res.to_any())
                yield cfg
            wanted = set(sub.names) | ({n for n in current if sub.covers(n)} if sub.wildcard else set())
            for name in sorted(n for n in wanted if n not in sub.sent and n != "*"):  # not sent (yet): NOT_SENT
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
            self.metrics.pilot_xds.inc()
        return client

    def close(self, client: ClientStatus) -> None:
        if self._clients.pop(client.stream_id, None) is None:
            return
        if client.node is not None:
            log.info("xds disconnect: node=%s %s after %.1fs", client.node_id or "-", client.protocol,
                     time.time() - client.connected_at)  # fmt: skip
        if self.metrics is not None:
            self.metrics.clients.labels(client.protocol).dec()
            self.metrics.pilot_xds.dec()

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
