"""`microxds agent` as a real process: configured from YAML, it joins a loopback mesh and forwards into it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.peers import free_port, stop_process
from tools.localmesh import ISTIOD_ID, LocalMesh

pytestmark = pytest.mark.timeout(120)  # three bounded waits of up to 30 s each, on a loaded machine
ROOT = str(Path(__file__).resolve().parents[2])
NODE_ID = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"


def agent_yaml(mesh: LocalMesh, path: Path, name: str, xds_port: int, **extra: object) -> Path:
    """The config file a user writes for an agent serving `default/<name>` with the mesh's node certificate."""
    path.write_text(yaml.safe_dump({
        "xds_address": f"127.0.0.1:{xds_port}",
        "certs": str(mesh.write_certs("node-cli", NODE_ID)),
        "control_plane_identities": [ISTIOD_ID],
        "workloads": [f"default/{name}"],
        "hbone_port": mesh.hbone_port,
        "node": {"instance_ip": mesh.ip(name), "pod_name": f"ztunnel-{name}"},
        **extra,
    }))  # fmt: skip
    return path


async def start_agent(config: Path, *flags: str) -> asyncio.subprocess.Process:
    """`microxds agent --config <config> <flags>` as a child process, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "microxds.cli", "agent", "--config", str(config), *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip


async def output_matches(proc: asyncio.subprocess.Process, pattern: str, count: int) -> list[re.Match[str]]:
    """The first `count` matches of `pattern` in the agent's output lines (each line within 30 s; its stderr if it
    exits first)."""
    assert proc.stdout is not None
    found: list[re.Match[str]] = []
    while len(found) < count:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, (await proc.stderr.read()).decode() if proc.stderr else "agent exited"
        if m := re.search(pattern, line):
            found.append(m)
    return found


async def test_agent_process_forwards_through_the_mesh(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    await mesh.start_control_plane()
    try:
        await mesh.start_app("bob")
        await mesh.start_agent("bob")
        forwards = [{"listen": f"{mesh.ip('alice')}:0", "target": "bob.default.svc.cluster.local:80"}]
        config = agent_yaml(mesh, tmp_path / "alice.yaml", "alice", mesh.xds_port, forwards=forwards)
        proc = await start_agent(config, "--admin", "off", "--metrics", "off", "--readiness", "off")
        try:
            (forward,) = await output_matches(proc, r"forward \S+:(\d+) -> ", 1)
            port = int(forward.group(1))
            reader, writer = await asyncio.open_connection(mesh.ip("alice"), port)
            writer.write(b"from the cli agent")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"from the cli agent"
            writer.close()
        finally:
            await stop_process(proc, 15)
        assert proc.returncode == 0  # a clean drain on SIGTERM
    finally:
        await mesh.stop()


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_agent_readiness_waits_for_xds_then_admin_shows_its_state(tmp_path: Path) -> None:
    """503 (with the reason) while the control plane is away, 200 once every xDS type is ACKed and the workload
    serves; then the config dump has the mesh state and xDS versions, and the metrics the xDS counters."""
    mesh = LocalMesh(tmp_path)
    xds_port = free_port()
    listeners = {"admin": "127.0.0.1:0", "metrics": "127.0.0.1:0", "readiness": "127.0.0.1:0"}
    proc = await start_agent(agent_yaml(mesh, tmp_path / "bob.yaml", "bob", xds_port, **listeners))
    try:
        found = await output_matches(proc, r"(admin|metrics|readiness) listening [\d.]+:(\d+)", 3)
        ports = {m.group(1): int(m.group(2)) for m in found}
        status, body = await _get(ports["readiness"], "/healthz/ready")
        assert status == 503 and body.startswith("not ready: xDS"), body  # not started, or types not ACKed yet

        await mesh.start_control_plane(xds_port)
        await mesh.start_app("bob")
        for _ in range(300):  # polling the probe as a kubelet does, at most 30 s
            status, body = await _get(ports["readiness"], "/healthz/ready")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body

        dump = json.loads((await _get(ports["admin"], "/config_dump"))[1])
        assert {i["identity"] for i in dump["identities"]} >= {
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
            "spiffe://cluster.local/ns/default/sa/bob",
        }
        assert any(w["name"] == "bob" for w in dump["workloads"].values())
        assert any(s["name"] == "bob" for s in dump["services"].values())
        types = dump["xds"]["types"]
        assert types["type.googleapis.com/istio.workload.Address"]["acked"] is True
        assert types["type.googleapis.com/istio.workload.Address"]["versions"]
        assert dump["listeners"][0]["workload"] == "default/bob"
        metrics = (await _get(ports["metrics"], "/metrics"))[1]
        assert re.search(r'istio_xds_message_total\{url="type.googleapis.com/istio.workload.Address"\} [1-9]', metrics)
        assert 'hbone_cert_expiry_timestamp_seconds{identity="spiffe://cluster.local/ns/default/sa/bob"}' in metrics

        # The control plane goes away: the stream's end is counted (ztunnel's istio_xds_connection_terminations).
        await mesh.stop_control_plane()
        for _ in range(300):  # at most 30 s
            metrics = (await _get(ports["metrics"], "/metrics"))[1]
            if "istio_xds_connection_terminations_total{" in metrics:
                break
            await asyncio.sleep(0.1)
        assert re.search(r"istio_xds_connection_terminations_total\{reason=\"\w+\"\} [1-9]", metrics), metrics
    finally:
        await stop_process(proc, 15)  # SIGKILL if it does not drain: a failed run must not leave an agent behind
        await mesh.stop()
