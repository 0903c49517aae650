"""The `microxds` CLI in-process: `dump` against our server over h2c, TLS (--ca) and mesh mTLS (--certs), SotW and
Delta, text and JSON; `serve` argument errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.testing import TestCA
from microxds.cli import main
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(30)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Path]]:
    ca = TestCA()
    certs = tmp_path / "server"
    ca.write(certs, "istio-system", "microxds")
    ca.write(tmp_path / "client", "default", "dump")
    opts = ServeOptions(
        config=EXAMPLES / "envoy-http-routes.yaml",
        listen="127.0.0.1:0",
        tls_listen="127.0.0.1:0",
        hbone_listen="127.0.0.1:0",
        certs=certs,
    )
    cp = ControlPlane(opts)
    await cp.start()
    try:
        yield cp, tmp_path
    finally:
        await cp.stop(0.5)


def addr(cp: ControlPlane, name: str) -> str:
    host, port = cp.addresses[name]
    return f"{host}:{port}"


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_dump_plaintext_sotw_text(plane: tuple[ControlPlane, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cp, _ = plane
    assert await run_cli("dump", "--server", addr(cp, "plaintext"), "--plaintext", "--type", "eds") == 0
    out = capsys.readouterr().out
    assert out.startswith("# ClusterLoadAssignment: 1 resources")
    assert "--- # echo" in out and "port_value: 8081" in out


async def test_dump_delta_json_names(plane: tuple[ControlPlane, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cp, _ = plane
    rc = await run_cli(
        "dump", "--server", addr(cp, "plaintext"), "--type", "cds", "--delta", "--json", "--names", "echo"
    )
    assert rc == 0
    [line] = capsys.readouterr().out.splitlines()
    doc = json.loads(line)
    assert doc["type_url"].endswith("Cluster") and [r["name"] for r in doc["resources"]] == ["echo"]
    assert doc["resources"][0]["resource"]["eds_cluster_config"]["service_name"] == "echo"
    assert doc["resources"][0]["version"]


async def test_dump_over_tls_and_mtls(plane: tuple[ControlPlane, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cp, tmp = plane
    ca_file = tmp / "server" / "root-cert.pem"
    assert await run_cli("dump", "--server", addr(cp, "tls"), "--ca", str(ca_file), "--type", "lds", "--json") == 0
    assert json.loads(capsys.readouterr().out)["resources"][0]["name"] == "http-10080"
    assert await run_cli("dump", "--server", addr(cp, "hbone"), "--certs", str(tmp / "client"), "--type", "rds",
                         "--expect-identity", "spiffe://cluster.local/ns/istio-system/sa/microxds") == 0  # fmt: skip
    assert "local-routes" in capsys.readouterr().out
    peers = {c.peer for c in cp.registry.clients()}
    assert not peers  # the dump streams are gone


async def test_dump_watch_count_and_unknown_type(
    plane: tuple[ControlPlane, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cp, _ = plane
    rc = await run_cli("dump", "--server", addr(cp, "plaintext"), "--type", "lds", "--watch", "--count", "1")
    assert rc == 0
    assert capsys.readouterr().out.count("# Listener:") == 1
    assert await run_cli("dump", "--server", addr(cp, "plaintext"), "--type", "nope") == 2
    assert "unknown resource type" in capsys.readouterr().err


def test_serve_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(EXAMPLES / "envoy-tcp-proxy.yaml")
    assert main(["serve", "--config", cfg, "--tls-listen", ":0"]) == 2
    assert "--certs" in capsys.readouterr().err
    assert main(["serve", "--config", cfg, "--node-group-by", "zone"]) == 2
    assert "node-group-by" in capsys.readouterr().err
    assert main(["serve", "--config", cfg, "--listen", "nonsense"]) == 2
