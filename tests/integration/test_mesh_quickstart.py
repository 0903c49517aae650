"""The quick start taken apart (issue 16 §1): `hbone mesh init` writes the mesh, and the commands it prints — run
as printed, each as its own process — bring it up: traffic alice → bob through the mesh, `microxds dump` and
`validate`, then the printed policy edit denies alice."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import stop_process

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
PROGRAMS = {"microxds": [sys.executable, "-m", "microxds.cli"], "hbone": [sys.executable, "-m", "hbone.cli"],
            "python3": [sys.executable]}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    return [*PROGRAMS.get(words[0], [words[0]]), *words[1:]]


def sections(text: str) -> tuple[list[str], list[str]]:
    _, _, rest = text.partition("Start each piece")
    run, _, try_next = rest.partition("Then try:")
    commands = [[ln.strip() for ln in block.splitlines() if ln.startswith("  ") and not ln.strip().startswith("#")]
                for block in (run, try_next)]  # fmt: skip
    return commands[0], commands[1]


async def test_printed_commands_bring_the_mesh_up(tmp_path: Path) -> None:
    subnet = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"  # concurrent runs must not share addresses
    ports = [str(free_port()) for _ in range(4)]
    init = await run(
        f"hbone mesh init {tmp_path / 'mesh'} --subnet {subnet} --xds-port {ports[0]} --hbone-port {ports[1]} "
        f"--app-port {ports[2]} --forward-port {ports[3]}"
    )
    assert init.returncode == 0, init.stderr
    start, try_next = sections(init.stdout)
    assert [c.split()[:2] for c in start] == [
        ["microxds", "serve"], ["python3", "-m"], ["microxds", "agent"], ["microxds", "agent"]
    ], start  # fmt: skip
    procs: list[asyncio.subprocess.Process] = []
    try:
        for command in start:
            proc = await asyncio.create_subprocess_exec(
                *argv(command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV
            )
            procs.append(proc)
            await ready(proc, command)
        curl, dump, validate, deny = try_next
        assert curl.startswith("curl ") and "deny-alice.yaml >>" in deny
        async with asyncio.timeout(60):
            while True:  # on a loaded machine the first tunnel can take a while: retry until it answers
                out = await run(curl)
                if out.returncode == 0:
                    break
                await asyncio.sleep(0.5)  # retry interval of the probe, not synchronisation
        assert "Directory listing" in out.stdout, out.stderr  # bob's http.server, reached through the mesh
        out = await run(dump)
        assert out.returncode == 0 and "Kubernetes//Pod/default/alice" in out.stdout, out.stdout + out.stderr
        assert (await run(validate)).returncode == 0
        mesh = tmp_path / "mesh" / "mesh.yaml"
        mesh.write_text(mesh.read_text() + (tmp_path / "mesh" / "deny-alice.yaml").read_text())  # what `cat >>` does
        async with asyncio.timeout(30):
            while True:  # the agents follow the watched file: try until the policy is in force
                if (await run(curl)).returncode != 0:
                    break
                await asyncio.sleep(0.2)  # retry interval of the probe, not synchronisation
    finally:
        for proc in reversed(procs):
            await stop_process(proc, 15)


async def ready(proc: asyncio.subprocess.Process, command: str) -> None:
    """Wait for the line each piece prints once it serves (its listener, or the agent's workload/forward)."""
    want = {
        "http.server": r"Serving HTTP",
        "microxds serve": r"listening on",
        "agent": r"microxds agent: (forward|default/)",
    }  # fmt: skip
    pattern = next(p for key, p in want.items() if key in command)
    assert proc.stdout is not None
    seen = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, f"{command} exited:\n{''.join(seen)}"
                seen.append(line)
                if re.search(pattern, line):
                    return
    except TimeoutError:
        raise AssertionError(f"{command} not ready after 60 s:\n{''.join(seen)}") from None


async def run(command: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, argv(command), capture_output=True, text=True, timeout=60, env=ENV, check=False
    )


async def test_mesh_sh_keep_prints_commands_that_work() -> None:
    """`tools/localmesh.py --keep` (what `bash tools/mesh.sh --keep` runs) stays up and its printed commands work."""
    from hbone.commands.mesh import MeshPlan

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tools" / "localmesh.py"), "--keep",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or "running; Ctrl-C to stop" not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        text = "".join(lines)
        assert "3. policy removed: allowed again" in text, text
        for _, cmd in MeshPlan(Path(".mesh")).start_commands():
            assert cmd in text  # the pieces, as the commands that start each by hand
        tries = text.split("This mesh keeps running; try:", 1)[1].splitlines()
        dump = next(ln.strip() for ln in tries if "--type workload --summary" in ln)
        out = await run(dump)
        assert out.returncode == 0 and "Kubernetes//Pod/default/bob" in out.stdout, out.stdout + out.stderr
        validate = next(ln.strip() for ln in tries if "microxds validate" in ln)
        assert (await run(validate)).returncode == 0
        probe = next(ln.strip() for ln in tries if ln.strip().startswith("hbone probe"))
        out = await run(probe)
        assert "status" in out.stdout and "Traceback" not in out.stderr, out.stdout + out.stderr
    finally:
        await stop_process(proc, 20, signal.SIGINT)
