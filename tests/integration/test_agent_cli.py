"""`microxds agent` as a real process: configured from YAML, it joins a loopback mesh and forwards into it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tools.localmesh import ISTIOD_ID, LocalMesh

pytestmark = pytest.mark.timeout(60)
ROOT = str(Path(__file__).resolve().parents[2])


async def test_agent_process_forwards_through_the_mesh(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path)
    await mesh.start_control_plane()
    try:
        await mesh.start_app("bob")
        await mesh.start_agent("bob")
        config = tmp_path / "alice.yaml"
        config.write_text(yaml.safe_dump({
            "xds_address": f"127.0.0.1:{mesh.xds_port}",
            "certs": str(mesh.write_certs("node-cli", "spiffe://cluster.local/ns/istio-system/sa/ztunnel")),
            "control_plane_identities": [ISTIOD_ID],
            "workloads": ["default/alice"],
            "hbone_port": mesh.hbone_port,
            "forwards": [{"listen": f"{mesh.ip('alice')}:0", "target": "bob.default.svc.cluster.local:80"}],
            "node": {"instance_ip": mesh.ip("alice"), "pod_name": "ztunnel-alice"},
        }))  # fmt: skip
        env = {**os.environ, "PYTHONPATH": ROOT}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "microxds.cli", "agent", "--config", str(config),
            "--admin", "off", "--metrics", "off", "--readiness", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            port = 0
            while not port:
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
                assert line, (await proc.stderr.read()).decode() if proc.stderr else "agent exited"
                if m := re.search(r"forward \S+:(\d+) -> ", line):
                    port = int(m.group(1))
            reader, writer = await asyncio.open_connection(mesh.ip("alice"), port)
            writer.write(b"from the cli agent")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"from the cli agent"
            writer.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        await mesh.stop()
