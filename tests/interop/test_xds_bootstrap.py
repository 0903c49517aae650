"""`microxds bootstrap envoy|grpc` output used as is by real clients, and a config `microxds validate` passes is
ACKed by real Envoy (issue 16 §2, §3).

Envoy: `envoy --mode validate` accepts the bootstrap; Envoy started with it (SotW, Delta, mutual TLS to the mesh
listener) gets every type from microxds with no rejected update and carries traffic. gRPC: a grpcio client with
GRPC_XDS_BOOTSTRAP set to `microxds bootstrap grpc` resolves `xds:///echo` (the README's proxyless example).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hbone.testing import TestCA
from microxds.validate import validate_path
from tests.interop.test_xds_proxyless import PY_CLIENT, wait_answers  # `backends`: tests/interop/conftest.py
from tests.interop.test_xds_support import Microxds, by_prefix, start_tag_server, wait_tag
from tests.peers import LOOPBACK, Envoy, ProcessPeer, close_server, envoy_validate, loopback_env, require_envoy

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TYPES = ("cluster_manager.cds.", "listener_manager.lds.", "http.ingress_http.rds.local-routes.")
PLANE_ID = "spiffe://cluster.local/ns/istio-system/sa/istiod"


def bootstrap(client: str, *args: str) -> dict[str, Any]:
    """Run the CLI as a user would; its stdout parsed (YAML is a superset of the gRPC JSON)."""
    proc = subprocess.run(
        [sys.executable, "-m", "microxds.cli", "bootstrap", client, *args],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = yaml.safe_load(proc.stdout) if proc.stdout else {}
    return doc


def example_on_loopback(tmp_path: Path, backend_port: int) -> Path:
    """examples/envoy-http-routes.yaml with its listener on 127.0.0.1:0 and its endpoints on our backend, plus a
    TCP listener to the same backend (traffic we can check without an HTTP server)."""
    text = (EXAMPLES / "envoy-http-routes.yaml").read_text()
    text = text.replace("address: 127.0.0.1, port_value: 10080", "address: 127.0.0.1, port_value: 0")
    text = text.replace("port_value: 8080", f"port_value: {backend_port}").replace("port_value: 8081", "port_value: 9")
    tcp = (EXAMPLES / "envoy-tcp-proxy.yaml").read_text()
    doc, extra = yaml.safe_load(text), yaml.safe_load(tcp)
    for res in extra["resources"]:
        if res.get("name") and "Listener" in res["@type"]:
            res["address"] = {"socket_address": {"address": LOOPBACK, "port_value": 0}}
        if "Cluster" in res["@type"] and res.get("load_assignment"):
            for ep in res["load_assignment"]["endpoints"][0]["lb_endpoints"]:
                ep["endpoint"]["address"]["socket_address"].update(address=LOOPBACK, port_value=backend_port)
    doc["resources"].extend(extra["resources"])
    path = tmp_path / "xds.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("mode", ["sotw", "delta", "mtls"])
async def test_envoy_runs_the_printed_bootstrap(tmp_path: Path, mode: str) -> None:
    require_envoy()
    backend, port = await start_tag_server(b"T")
    config = example_on_loopback(tmp_path, port)
    report = validate_path(config)
    assert report.ok and not report.warnings, report.lines()
    args = ["--admin", f"{LOOPBACK}:0", "--node-id", f"envoy-{mode}"]
    extra: list[str] = []
    if mode == "delta":
        args.append("--delta")
    if mode == "mtls":
        ca = TestCA()
        plane = ca.write(tmp_path / "plane", "istio-system", "istiod")
        envoy_certs = ca.write(tmp_path / "envoy", "edge", "envoy")
        extra = ["--listen", "off", "--hbone-listen", f"{LOOPBACK}:0", "--certs", str(plane)]
    try:
        async with Microxds(config, *extra) as xds:
            if mode == "mtls":
                server = f"{LOOPBACK}:{xds.addresses['hbone'][1]}"
                args += ["--tls", "--certs", str(envoy_certs), "--server-identity", PLANE_ID]
            else:
                server = xds.target
            doc = await asyncio.to_thread(bootstrap, "envoy", "--server", server, *args)
            checked = envoy_validate(doc)
            assert checked.ok, checked.output
            async with Envoy(doc) as envoy:
                await envoy.wait_ready()
                await envoy.wait_stat("listener_manager.lds.update_success", lambda v: int(v) >= 1)
                await envoy.wait_stat("http.ingress_http.rds.local-routes.update_success", lambda v: int(v) >= 1)
                await wait_tag(await envoy.listener_port("tcp-10000"), b"T")
                stats = await envoy.stats()
                for prefix in TYPES:
                    assert int(stats.get(prefix + "update_rejected", 0) or 0) == 0, (prefix, stats)
                assert by_prefix(await xds.metrics(), "microxds_xds_nacks_total") == 0
    finally:
        await close_server(backend)


async def test_grpcio_uses_the_printed_bootstrap(tmp_path: Path, backends: dict[str, int]) -> None:
    text = (EXAMPLES / "grpc-proxyless.yaml").read_text()
    config = tmp_path / "xds.yaml"
    config.write_text(text.replace("port_value: 50051", f"port_value: {backends['A']}"))
    assert validate_path(config).ok
    async with Microxds(config) as xds:
        path = tmp_path / "grpc-bootstrap.json"
        await asyncio.to_thread(bootstrap, "grpc", "--server", xds.target, "-o", str(path))
        assert json.loads(path.read_text())["xds_servers"][0]["server_uri"] == xds.target
        env = loopback_env({"GRPC_XDS_BOOTSTRAP": str(path)})
        with ProcessPeer([sys.executable, "-c", PY_CLIENT, "60"], name="grpcio-xds", env=env) as client:
            await wait_answers(client, "A")
        assert by_prefix(await xds.metrics(), "microxds_xds_nacks_total") == 0
