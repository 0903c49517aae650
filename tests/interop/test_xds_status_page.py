"""The microxds status page, `microxds status` and the debug endpoints with a real Envoy and a real agent.

The page is loaded once in headless Chromium (DevTools protocol on a pipe): it shows one row per proxy, and after
a config edit that Envoy rejects it shows the NACK with Envoy's error, without a reload. The screenshot is always
taken (a failure to render fails the test); it replaces docs/status-page.png (shown in the README) only with
HBONE_UPDATE_DOCS=1, so ordinary runs leave the working tree clean.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.interop.test_xds_proxyless import (
    PY_CLIENT,
    bootstrap,
    proxyless_resources,
    wait_answers,
)
from tests.interop.test_xds_support import (
    CLUSTER_T,
    envoy_ads_bootstrap,
    start_tag_server,
    static_cluster,
    tcp_listener,
)
from tests.peers import Envoy, ProcessPeer, ahttp_get, close_server, envoy_static_cluster, loopback_env, require_envoy
from tests.peers.chromium import Browser
from tools.localmesh import LocalMesh

pytestmark = [pytest.mark.timeout(120), pytest.mark.interop]
ROOT = Path(__file__).resolve().parents[2]
CDS = "cluster_manager.cds."
ROWS = "[...document.querySelectorAll('tr[data-node]')].map(r => r.dataset.node)"


async def microxds_status(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "microxds.cli", "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def mesh_config(envoy: list[dict[str, Any]], grpc_port: int) -> str:
    """Envoy's resources for every node; the proxyless listener/route/cluster only for node `grpcio-1` (its group),
    so Envoy's wildcard LDS/CDS never see an api_listener."""
    proxyless = proxyless_resources(grpc_port)
    own = [r for r in proxyless if not r["@type"].endswith("ClusterLoadAssignment")]
    shared = [r for r in proxyless if r["@type"].endswith("ClusterLoadAssignment")]  # endpoints are shared
    doc = {"resources": [*envoy, *shared], "groups": {"grpcio-1": {"resources": own}}}
    return yaml.dump(doc, Dumper=_NoAliases, sort_keys=False)  # config files refuse YAML aliases


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


async def test_status_page_shows_envoy_and_agent_then_a_nack_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, backends: dict[str, int]
) -> None:
    require_envoy()
    caplog.set_level(logging.INFO, logger="microxds.xds")
    backend, backend_port = await start_tag_server(b"A")
    good = [static_cluster("backend", backend_port), tcp_listener("tcp_in", "backend")]
    mesh = LocalMesh(tmp_path)
    mesh.write_config(mesh_config(good, backends["A"]))
    try:
        await mesh.start_control_plane(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")
        assert mesh.plane is not None
        xds_port = mesh.plane.addresses["plaintext"][1]
        metrics_port = mesh.plane.addresses["metrics"][1]
        await mesh.start_app("bob")
        agent = await mesh.start_agent("bob")
        env = loopback_env({"GRPC_XDS_BOOTSTRAP": str(bootstrap(tmp_path, xds_port, "grpcio-1"))})
        grpcio = ProcessPeer([sys.executable, "-c", PY_CLIENT, "60"], name="grpcio-xds", env=env)
        async with Envoy(envoy_ads_bootstrap(xds_port, "GRPC")) as envoy, grpcio, Browser() as browser:
            await envoy.wait_ready()
            await wait_answers(grpcio, "A")
            await envoy.wait_stat(CDS + "update_success", lambda v: int(v) >= 1)
            base = f"http://127.0.0.1:{metrics_port}"
            await browser.open(f"{base}/debug/status")
            nodes = await browser.wait_for(f"(() => {{ const n = {ROWS}; return n.length == 3 && n; }})()")
            agent_node = agent.config.profile.node_id
            assert sorted(nodes) == sorted(["envoy-1", "grpcio-1", agent_node])
            await browser.wait_for("document.querySelectorAll('.state.SYNCED').length >= 8")
            await browser.evaluate("window.loadedOnce = 'yes'")  # gone if the page were reloaded

            # Passes microxds's validation (the protos' rules), rejected by Envoy's code (a STATIC cluster's endpoint
            # must be an IP literal): a NACK.
            bad = {"@type": CLUSTER_T, **envoy_static_cluster("bad", backend_port, host="localhost")}
            mesh.write_config(mesh_config([*good, bad], backends["A"]))
            await envoy.wait_stat(CDS + "update_rejected", lambda v: int(v) >= 1)
            nack = await browser.wait_for(
                "(() => { const n = document.querySelector('tr[data-node=\"envoy-1\"] .nack'); "
                "return n && n.textContent; })()"
            )
            assert "malformed ip address" in nack.lower(), nack
            assert await browser.evaluate("window.loadedOnce") == "yes"
            assert await browser.evaluate(f"document.querySelector('tr[data-node=\"{agent_node}\"] .nack') === null")
            update_docs = os.environ.get("HBONE_UPDATE_DOCS") == "1"
            shot = ROOT / "docs" / "status-page.png" if update_docs else tmp_path / "status-page.png"
            await browser.screenshot(shot)
            assert shot.stat().st_size > 10_000  # a rendered page, not an empty image

            # The same state as JSON, per node config dump, istiod metric names and log lines.
            syncz = json.loads((await ahttp_get(f"{base}/debug/syncz"))[1])
            by_node = {row["node"]: row for row in syncz}
            assert by_node["envoy-1"]["protocol"] == "SotW" and by_node[agent_node]["protocol"] == "Delta"
            assert by_node[agent_node]["identity"] == "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
            assert by_node["envoy-1"]["types"][CLUSTER_T]["state"] == "NACKED"
            assert all(t["state"] == "SYNCED" for t in by_node[agent_node]["types"].values())
            status, body = await ahttp_get(f"{base}/debug/config_dump?node=envoy-1")
            dump = json.loads(body)
            assert status == 200 and dump["config"][0]["node"]["id"] == "envoy-1"
            metrics = (await ahttp_get(f"{base}/metrics"))[1].decode()
            assert "pilot_xds 3.0" in metrics
            assert 'pilot_total_xds_rejects_total{type="cds"} 1.0' in metrics
            assert 'pilot_xds_pushes_total{type="cds"}' in metrics and 'pilot_xds_pushes_total{type="wds"}' in metrics
            assert "pilot_proxy_convergence_time_count" in metrics and "pilot_xds_push_time_bucket" in metrics
            text = caplog.text
            assert f"xds connect: node={agent_node} delta" in text and "xds connect: node=envoy-1 sotw" in text
            assert "xds NACK: node=envoy-1 type=" + CLUSTER_T in text

            # `microxds status`: the table over CSDS, then the resource-level view of one node.
            rc, out = await microxds_status("--server", f"127.0.0.1:{xds_port}")
            assert rc == 0, out
            envoy_line = next(line for line in out.splitlines() if line.startswith("envoy-1"))
            agent_line = next(line for line in out.splitlines() if line.startswith(agent_node))
            assert "NACKED" in envoy_line and "SYNCED" in envoy_line
            grpc_line = next(line for line in out.splitlines() if line.startswith("grpcio-1"))
            assert grpc_line.split().count("SYNCED") == 4, out  # LDS, RDS, CDS, EDS of the proxyless client
            assert "SYNCED" in agent_line and "NACKED" not in agent_line  # (no policies: authorization shows "-")
            print(out)
            rc, out = await microxds_status("--server", f"127.0.0.1:{xds_port}", "envoy-1")
            assert rc == 0 and "NACK:" in out and "! bad" in out, out
            print(out)
            rc, out = await microxds_status("--server", f"127.0.0.1:{xds_port}", "--json")
            assert {p["node"] for p in json.loads(out)} == {"envoy-1", "grpcio-1", agent_node}
            await asyncio.to_thread(mesh.write_config, mesh_config(good, backends["A"]))
    finally:
        await mesh.stop()
        await close_server(backend)
    assert f"xds disconnect: node={agent_node} delta" in caplog.text
