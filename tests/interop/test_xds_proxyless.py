"""Proxyless gRPC clients (grpcio C-core and @grpc/grpc-js-xds) resolve `xds:///echo` through `microxds serve`.

Each client runs in its own process (the xDS bootstrap is read from GRPC_XDS_BOOTSTRAP when the client library
starts), keeps one channel open and calls a grpcio backend in a loop, printing which backend answered. Moving the
endpoint in the YAML file must move the running clients' traffic to the other backend: that is an EDS push over
the client's existing ADS stream, not a re-resolution.
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.interop.test_xds_support import Microxds, by_prefix
from tests.peers import LOOPBACK, NODE_DIR, ProcessPeer, loopback_env, require_node_xds

pytestmark = pytest.mark.timeout(120)
PREFIX = "type.googleapis.com/"
METHOD = "/interop.Echo/Call"

PY_CLIENT = r"""
import sys, time, grpc
channel = grpc.insecure_channel("xds:///echo")
call = channel.unary_unary("/interop.Echo/Call")
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        print("ok", call(b"ping", timeout=5).decode(), flush=True)
    except grpc.RpcError as e:
        print("err", e.code().name, (e.details() or "").replace("\n", " ")[:200], flush=True)
    time.sleep(0.1)  # call rate of the client under test, not synchronisation
"""

NODE_CLIENT = r"""
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();
const client = new grpc.Client('xds:///echo', grpc.credentials.createInsecure());
const end = Date.now() + Number(process.argv[1]) * 1000;
const id = (b) => b;
function once() {
  if (Date.now() > end) { client.close(); process.exit(0); }
  client.makeUnaryRequest('/interop.Echo/Call', id, id, Buffer.from('ping'), new grpc.Metadata(),
    { deadline: Date.now() + 5000 }, (err, resp) => {
      console.log(err ? `err ${err.code} ${String(err.details).slice(0, 200)}` : `ok ${resp.toString()}`);
      setTimeout(once, 100);
    });
}
once();
"""


def proxyless_resources(port: int) -> list[dict[str, Any]]:
    """docs/xds.md (proxyless gRPC): api_listener + RDS over ADS, EDS cluster, CLA with a weighted locality."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    hcm = PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    rds = {"route_config_name": "echo-route", "config_source": ads}
    router = {"name": "router", "typed_config": {"@type": PREFIX + "envoy.extensions.filters.http.router.v3.Router"}}
    return [
        {"@type": PREFIX + "envoy.config.listener.v3.Listener", "name": "echo",
         "api_listener": {"api_listener": {"@type": hcm, "stat_prefix": "echo", "rds": rds,
                                           "http_filters": [router]}}},
        {"@type": PREFIX + "envoy.config.route.v3.RouteConfiguration", "name": "echo-route",
         "virtual_hosts": [{"name": "vh", "domains": ["*"],
                            "routes": [{"match": {"prefix": ""}, "route": {"cluster": "echo-cluster"}}]}]},
        {"@type": PREFIX + "envoy.config.cluster.v3.Cluster", "name": "echo-cluster", "type": "EDS",
         "lb_policy": "ROUND_ROBIN", "eds_cluster_config": {"service_name": "echo-eds", "eds_config": ads}},
        {"@type": PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": "echo-eds",
         "endpoints": [{"locality": {"region": "r1", "zone": "z1"}, "load_balancing_weight": 1,
                        "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": LOOPBACK, "port_value": port}}}, "health_status": "HEALTHY"}]}]},
    ]  # fmt: skip


def write(path: Path, port: int) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(json.dumps({"resources": proxyless_resources(port)}, indent=1))
    tmp.replace(path)


def bootstrap(tmp_path: Path, xds_port: int, node_id: str) -> Path:
    path = tmp_path / f"bootstrap-{node_id}.json"
    path.write_text(
        json.dumps({
            "xds_servers": [{"server_uri": f"{LOOPBACK}:{xds_port}", "channel_creds": [{"type": "insecure"}],
                             "server_features": ["ignore_resource_deletion"]}],
            "node": {"id": node_id, "locality": {"zone": "z1"}},
        })
    )  # fmt: skip
    return path


async def wait_answers(peer: ProcessPeer, want: str, after: int = 0, timeout: float = 30.0) -> int:
    """Poll the client's output until a line `ok <want>` appears past line `after`; returns the line count."""
    deadline = time.monotonic() + timeout
    while True:
        lines = peer.log_path.read_text(errors="replace").splitlines() if peer.log_path.exists() else []
        if any(line.strip() == f"ok {want}" for line in lines[after:]):
            return len(lines)
        peer.check_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer from backend {want} within {timeout}s\n{peer.log_tail()}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


async def test_grpcio_and_grpc_js_follow_endpoint_moves(tmp_path: Path, backends: dict[str, int]) -> None:
    node = require_node_xds()
    config = tmp_path / "xds.json"
    write(config, backends["A"])
    async with Microxds(config) as xds:
        py_env = loopback_env({"GRPC_XDS_BOOTSTRAP": str(bootstrap(tmp_path, xds.xds_port, "py-client"))})
        js_env = loopback_env({"GRPC_XDS_BOOTSTRAP": str(bootstrap(tmp_path, xds.xds_port, "js-client"))})
        py = ProcessPeer([sys.executable, "-c", PY_CLIENT, "90"], name="grpcio-xds", env=py_env)
        js = ProcessPeer([node, "-e", NODE_CLIENT, "90"], name="grpc-js-xds", env=js_env, cwd=NODE_DIR)
        with py, js:
            seen_py = await wait_answers(py, "A")
            seen_js = await wait_answers(js, "A")
            assert await xds.metric('microxds_xds_clients{protocol="sotw"}') == 2

            write(config, backends["B"])  # move the endpoint: an EDS push to both running clients
            await wait_answers(py, "B", after=seen_py)
            await wait_answers(js, "B", after=seen_js)
            assert by_prefix(await xds.metrics(), "microxds_xds_nacks_total") == 0
