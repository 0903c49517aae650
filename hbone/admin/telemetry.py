"""Prometheus metrics of one daemon, with the names ztunnel uses, and the table of open tunnels.

Every daemon builds its own `CollectorRegistry` (never the global one, nothing at import time). Tunnel metrics
come from the access-record path (`hbone.proxy.accesslog` sinks), so every front end is counted the same way:

* `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
  `istio_tcp_received_bytes_total` (client -> destination) and `istio_tcp_sent_bytes_total` (destination -> client,
  Istio's "bytes sent during response"), labelled `reporter` (`destination` for tunnels this process terminates,
  `source` for tunnels it originates), `source_principal`, `destination_principal` (`spiffe://...` or `unknown`) and
  `response_flags` (`-`, `DENY` for a policy denial, `CONNECT` for any other failure), as ztunnel labels them;
* `istio_xds_message_total{url}` and `istio_xds_connection_terminations_total{reason}` for an xDS client;
* `hbone_cert_expiry_timestamp_seconds{identity}`: when each loaded certificate expires (Unix time);
* `hbone_limit_trips_total{limit}`: abuse limits that tripped (`hbone.limits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hbone.identity.certs import CertifiedKey
from hbone.limits import trip_counts
from hbone.proxy.accesslog import AccessRecord

TCP_LABELS = ("reporter", "source_principal", "destination_principal", "response_flags")


@dataclass
class XdsCounters:
    """What an xDS client reports: responses received per type URL, stream terminations per reason."""

    messages: Mapping[str, int] = field(default_factory=dict)
    terminations: Mapping[str, int] = field(default_factory=dict)


def _principal(identity: str | None) -> str:
    return identity if identity else "unknown"


def response_flags(record: AccessRecord) -> str:
    """ztunnel's flags: `-` when the tunnel was established, `DENY` (authorization), `CONNECT` otherwise."""
    if 200 <= record.status < 300 or record.status == 0:
        return "-"
    return "DENY" if record.status in (401, 403) else "CONNECT"


def reporter(record: AccessRecord) -> str:
    return "destination" if record.direction in ("inbound", "inbound-plaintext") else "source"


class Telemetry:
    """The metrics and open-tunnel table of one daemon. Register `opened`/`closed` as an access sink.

    The tunnel counters are plain integers per label set, turned into metric families at scrape time: a
    prometheus_client `Counter.inc()` (a lock, two checks, the value object) four times per tunnel was ~4% of a
    proxy's Python per tunnel. Like the Counter children they replace, label sets are kept for the process's life."""

    def __init__(
        self,
        *,
        certificates: Callable[[], Iterable[CertifiedKey]] = tuple,
        xds: Callable[[], XdsCounters] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.open: dict[int, AccessRecord] = {}
        #: Per label set (TCP_LABELS): [opened, closed, bytes received, bytes sent].
        self.tcp: dict[tuple[str, str, str, str], list[int]] = {}
        self.registry.register(_TcpCollector(self.tcp))
        self.registry.register(_StateCollector(certificates, xds))

    # -- access sink ------------------------------------------------------------------------------------------

    def opened(self, record: AccessRecord) -> None:
        self.open[id(record)] = record
        self._counts(record)[0] += 1

    def closed(self, record: AccessRecord) -> None:
        self.open.pop(id(record), None)
        counts = self._counts(record)
        counts[1] += 1
        counts[2] += record.bytes_sent
        counts[3] += record.bytes_received

    def _counts(self, record: AccessRecord) -> list[int]:
        # A tunnel announced while still unfinished has status 0: established, flag "-".
        key = (
            reporter(record),
            _principal(record.src_identity),
            _principal(record.dst_identity),
            response_flags(record),
        )
        counts = self.tcp.get(key)
        if counts is None:
            counts = self.tcp[key] = [0, 0, 0, 0]
        return counts

    def connections(self) -> list[dict[str, Any]]:
        """The open tunnels, oldest first: peer identity, source, destination, bytes each way, age."""
        now = time.time()
        out = []
        for rec in sorted(self.open.values(), key=lambda r: r.opened_at):
            sent, received = rec.live_bytes()
            inbound = reporter(rec) == "destination"
            out.append(
                {
                    "direction": rec.direction,
                    "mode": rec.mode,
                    "peer_identity": rec.src_identity if inbound else rec.dst_identity,
                    "source_identity": rec.src_identity,
                    "destination_identity": rec.dst_identity,
                    "source": rec.src_addr,
                    "destination": rec.dst_addr,
                    "bytes_to_destination": sent,
                    "bytes_from_destination": received,
                    "age_seconds": round(now - rec.opened_at, 3),
                    "policy": rec.policy,
                }
            )
        return out


_TCP_METRICS = (
    ("istio_tcp_connections_opened", "TCP connections opened"),
    ("istio_tcp_connections_closed", "TCP connections closed"),
    ("istio_tcp_received_bytes", "Bytes from the client towards the destination"),
    ("istio_tcp_sent_bytes", "Bytes from the destination back to the client"),
)


class _TcpCollector(Collector):
    """The tunnel counters of `Telemetry.tcp`, as ztunnel names and labels them."""

    def __init__(self, counts: Mapping[tuple[str, str, str, str], list[int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Any]:
        for i, (name, text) in enumerate(_TCP_METRICS):
            family = CounterMetricFamily(name, text, labels=TCP_LABELS)
            for labels, counts in list(self.counts.items()):
                family.add_metric(labels, counts[i])
            yield family


class _StateCollector(Collector):
    """Metrics read from live state at scrape time: certificate expiry, xDS client counters, limit trips."""

    def __init__(
        self, certificates: Callable[[], Iterable[CertifiedKey]], xds: Callable[[], XdsCounters] | None
    ) -> None:
        self.certificates = certificates
        self.xds = xds

    def collect(self) -> Iterator[Any]:
        expiry = GaugeMetricFamily(
            "hbone_cert_expiry_timestamp_seconds",
            "When each loaded certificate expires (Unix time)",
            labels=["identity"],
        )
        for cert in self.certificates():
            expiry.add_metric([str(cert.identity or "")], cert.not_after.timestamp())
        yield expiry
        trips = CounterMetricFamily("hbone_limit_trips", "Abuse limits that tripped, by limit", labels=["limit"])
        for limit, count in sorted(trip_counts().items()):
            trips.add_metric([limit], count)
        yield trips
        if self.xds is not None:
            counters = self.xds()
            messages = CounterMetricFamily("istio_xds_message", "xDS responses received, by type URL", labels=["url"])
            for url, count in sorted(counters.messages.items()):
                messages.add_metric([url], count)
            yield messages
            ends = CounterMetricFamily(
                "istio_xds_connection_terminations", "xDS streams that ended, by reason", labels=["reason"]
            )
            for reason, count in sorted(counters.terminations.items()):
                ends.add_metric([reason], count)
            yield ends
