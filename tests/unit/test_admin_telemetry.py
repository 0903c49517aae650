"""Telemetry and log formatting without sockets: limit trips as a counter, access records as bare JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from prometheus_client import generate_latest

from hbone import limits, logsetup
from hbone.admin.options import AdminOptions
from hbone.admin.service import Observability
from hbone.admin.telemetry import Telemetry, XdsCounters
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord


def test_limit_trips_and_xds_counters_are_exported() -> None:
    before = limits.trip_counts().get("test_limit", 0)
    limits.record_trip("test_limit")
    tel = Telemetry(xds=lambda: XdsCounters({"type.googleapis.com/istio.workload.Address": 3}, {"clean": 2}))
    text = generate_latest(tel.registry).decode()
    assert f'hbone_limit_trips_total{{limit="test_limit"}} {before + 1}.0' in text
    assert 'istio_xds_message_total{url="type.googleapis.com/istio.workload.Address"} 3.0' in text
    assert 'istio_xds_connection_terminations_total{reason="clean"} 2.0' in text


def test_refused_record_counts_opened_and_closed_with_its_flag() -> None:
    tel = Telemetry()
    rec = AccessRecord("inbound", src_identity="spiffe://td/ns/a/sa/x")
    tel.opened(rec)
    rec.status = 503
    tel.closed(rec)
    text = generate_latest(tel.registry).decode()
    assert 'response_flags="CONNECT",source_principal="spiffe://td/ns/a/sa/x"} 1.0' in text
    assert tel.connections() == []


def test_tunnel_counters_per_label_set() -> None:
    tel = Telemetry()
    for sent in (100, 50):
        rec = AccessRecord("inbound", src_identity="spiffe://td/ns/a/sa/x", dst_identity="spiffe://td/ns/b/sa/y")
        tel.opened(rec)
        rec.status, rec.bytes_sent, rec.bytes_received = 200, sent, 7
        tel.closed(rec)
    tel.opened(AccessRecord("forward"))  # still open: counted as opened only
    text = generate_latest(tel.registry).decode()
    labels = (
        'destination_principal="spiffe://td/ns/b/sa/y",reporter="destination",response_flags="-",'
        'source_principal="spiffe://td/ns/a/sa/x"'
    )
    for name, value in [("opened", 2), ("closed", 2)]:
        assert f"istio_tcp_connections_{name}_total{{{labels}}} {value}.0" in text
    assert f"istio_tcp_received_bytes_total{{{labels}}} 150.0" in text
    assert f"istio_tcp_sent_bytes_total{{{labels}}} 14.0" in text
    source = 'destination_principal="unknown",reporter="source",response_flags="-",source_principal="unknown"'
    assert f"istio_tcp_connections_opened_total{{{source}}} 1.0" in text
    assert f"istio_tcp_connections_closed_total{{{source}}} 0.0" in text
    assert len(tel.connections()) == 1


def test_access_records_are_bare_json_in_both_formats() -> None:
    for fmt in ("text", "json"):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(logsetup.LineFormatter(fmt))
        logger = logging.getLogger("hbone.access.test")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("x", extra={"access": {"direction": "inbound", "status": 200}})
            logger.warning("plain %s", "line")
        finally:
            logger.removeHandler(handler)
        access, plain = out.getvalue().splitlines()
        assert json.loads(access)["direction"] == "inbound" and access.startswith('{"time":')
        if fmt == "json":
            assert json.loads(plain)["message"] == "plain line"
        else:
            assert plain.endswith("WARNING hbone.access.test: plain line")


def test_admin_options_precedence() -> None:
    opts = AdminOptions.resolve(None, {"metrics": "127.0.0.1:9999", "readiness": "off"})
    assert opts.admin == ("127.0.0.1", 15000) and opts.metrics == ("127.0.0.1", 9999) and opts.readiness is None
    assert AdminOptions() == AdminOptions.off() and list(AdminOptions().ports()) == []


def test_no_counting_without_a_port_that_shows_it() -> None:
    before = list(accesslog._sinks)

    async def main() -> None:
        obs = Observability(AdminOptions.off())
        await obs.start()
        assert accesslog._sinks == before  # neither admin nor metrics: no per-tunnel counting
        await obs.stop()

    asyncio.run(main())
