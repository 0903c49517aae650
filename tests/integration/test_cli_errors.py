"""Both CLIs as real processes: every failure is one line on stderr and exit 2, never a traceback (issue 16 §4)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbone.testing import TestCA, start_echo_server
from tests.peers import NO_ADMIN

pytestmark = pytest.mark.timeout(60)
ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}
HBONE = [sys.executable, "-m", "hbone.cli"]
MICROXDS = [sys.executable, "-m", "microxds.cli"]


DAEMONS = ("serve", "forward", "socks5", "http-proxy", "agent")


def run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    # Daemons never take the fixed default admin ports here (microxds serve has none).
    admin = NO_ADMIN if args and args[0] in DAEMONS and not (cmd is MICROXDS and args[0] == "serve") else ()
    return subprocess.run(
        [*cmd, *args, *admin],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], prog: str, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("certs")
    TestCA().write(base / "alice", "ns", "alice")
    return base / "alice"


def test_version_on_both_clis() -> None:
    for cmd, prog in ((HBONE, "hbone"), (MICROXDS, "microxds")):
        proc = run(cmd, "--version")
        assert proc.returncode == 0 and proc.stdout.startswith(f"{prog} "), proc


def test_port_in_use_is_one_line(busy_port: int, certs: Path) -> None:
    where = f"127.0.0.1:{busy_port}"
    assert_one_line_error(run(HBONE, "serve", "--certs", str(certs), "--listen", where), "hbone", "in use", "port")
    assert_one_line_error(
        run(HBONE, "socks5", "--listen", where, "--direct"), "hbone", "address already in use", "choose another port"
    )
    config = Path(ROOT) / "examples" / "envoy-tcp-proxy.yaml"
    assert_one_line_error(run(MICROXDS, "serve", "--config", str(config), "--listen", where), "microxds", "in use")


def test_bad_server_address_is_one_line() -> None:
    proc = run(MICROXDS, "dump", "--server", "127.0.0.1:", "--plaintext", "--type", "cds")
    assert_one_line_error(proc, "microxds", "bad server address '127.0.0.1:'", "HOST:PORT")


def test_bad_listen_address_names_the_forms() -> None:
    proc = run(HBONE, "socks5", "--listen", "localhost", "--direct")
    assert_one_line_error(proc, "hbone", "bad listen address 'localhost'", ":PORT")


def test_inconsistent_flags_are_refused_at_start(tmp_path: Path) -> None:
    proc = run(HBONE, "socks5", "--listen", "127.0.0.1:0", "--via", "127.0.0.1:15008")
    assert_one_line_error(proc, "hbone", "--certs")
    config = Path(ROOT) / "examples" / "envoy-tcp-proxy.yaml"
    proc = run(MICROXDS, "serve", "--config", str(config), "--listen", "off")
    assert_one_line_error(proc, "microxds", "nothing to serve", "--tls-listen")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = run(MICROXDS, "serve", "--config", str(tmp_path / "absent.yaml"), "--listen", "127.0.0.1:0")
    assert_one_line_error(proc, "microxds", "absent.yaml")


def test_closed_stdout_is_quiet() -> None:
    """`… | head`: the reader leaves early; no BrokenPipeError traceback, the SIGPIPE convention instead."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [*HBONE, "capture", "print-rules"],
            check=False, stdout=write, stderr=subprocess.PIPE, text=True, timeout=30, env=ENV,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


async def test_connect_with_regular_files_on_stdin_and_stdout(tmp_path: Path, certs: Path) -> None:
    """uvloop cannot watch a regular file: `hbone connect … < in > out` must still relay (rc 134 before)."""
    payload = os.urandom(300_000)
    (tmp_path / "in").write_bytes(payload)
    echo, echo_port = await start_echo_server()
    server = await asyncio.create_subprocess_exec(
        *HBONE, "serve", "--h2c-listen", "127.0.0.1:0", "--listen", "none", "--authz", "allow-all", *NO_ADMIN,
        stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        line = (await asyncio.wait_for(server.stderr.readline(), 20)).decode()
        via = line.split("h2c=", 1)[1].split()[0]
        with (tmp_path / "in").open("rb") as src, (tmp_path / "out").open("wb") as dst:
            client = await asyncio.create_subprocess_exec(
                *HBONE, "connect", f"127.0.0.1:{echo_port}", "--via", via, "--plaintext",
                stdin=src, stdout=dst, stderr=asyncio.subprocess.PIPE, env={**ENV, "HBONE_NO_UVLOOP": ""},
            )  # fmt: skip
            _, err = await asyncio.wait_for(client.communicate(), 30)
        assert client.returncode == 0, err.decode()
        assert (tmp_path / "out").read_bytes() == payload
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 15)
        echo.close()


async def test_agent_says_what_it_waits_for(tmp_path: Path) -> None:
    from tools.localmesh import LocalMesh  # the in-process control plane of the quick start

    mesh = LocalMesh(tmp_path)
    await mesh.start_control_plane()
    proc = None
    try:
        certs = mesh.write_certs("node-cli", "spiffe://cluster.local/ns/istio-system/sa/ztunnel")
        proc = await asyncio.create_subprocess_exec(
            *MICROXDS, "agent", "--xds-address", f"127.0.0.1:{mesh.xds_port}", "--certs", str(certs),
            "--workload", "default/unknown", *NO_ADMIN,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=ENV,
        )  # fmt: skip
        assert proc.stderr is not None
        seen = []
        while not any("waiting for workload default/unknown" in ln for ln in seen):
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "".join(seen)
            seen.append(line)
        assert "not in the xDS state" in seen[-1] and "known in namespace default" in seen[-1]
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
        await mesh.stop()
