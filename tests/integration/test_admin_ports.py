"""The admin, metrics and readiness ports of real daemons (`hbone serve`, `hbone socks5`), asserted against real
tunnels: open-connection table with live byte counts, ztunnel's metric names and labels, config dump, readiness,
live log levels, JSON logs, bounded requests, and a clear error for a busy port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.identity import IdentityManager, load_bundle
from hbone.testing import TestCA, start_echo_server
from hbone.tls import MeshTls
from tests.peers import free_port, stop_process

pytestmark = pytest.mark.timeout(90)
HBONE = [sys.executable, "-m", "hbone.cli"]
EPHEMERAL = ("--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--readiness", "127.0.0.1:0")
ALICE = "spiffe://cluster.local/ns/ns/sa/alice"
BOB = "spiffe://cluster.local/ns/ns/sa/bob"
MALLORY = "spiffe://cluster.local/ns/other/sa/mallory"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("certs")
    ca = TestCA()
    for ns, sa in (("ns", "alice"), ("ns", "bob"), ("other", "mallory")):
        ca.write(base / sa, ns, sa)
    return base


class Daemon:
    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int], lines: list[str]) -> None:
        self.proc, self.ports, self.lines = proc, ports, lines
        self._pump: asyncio.Task[None] | None = None

    async def get(self, port: str, path: str) -> tuple[int, str]:
        return await http_get(self.ports[port], path)

    async def access_records(self, count: int) -> list[dict[str, object]]:
        """Wait (bounded) until `count` access records were logged; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:
            records = [json.loads(line) for line in self.lines if line.startswith("{") and '"direction"' in line]
            if len(records) >= count or loop.time() > deadline:
                return records
            await asyncio.sleep(0.05)  # polling a pipe we do not own the reader of; bounded by the deadline


@contextlib.asynccontextmanager
async def daemon(*args: str, listeners: tuple[str, ...]) -> AsyncIterator[Daemon]:
    """Start an `hbone` daemon and read the ports it reports ("<name> listening HOST:PORT") from stderr."""
    proc = await asyncio.create_subprocess_exec(
        *HBONE, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    lines: list[str] = []
    try:
        while not set(listeners) <= set(ports):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            if not line:
                raise AssertionError(f"{' '.join(args[:3])} exited: {''.join(lines)}")
            lines.append(line)
            if m := re.search(r"(\S+) listening (?:mtls=)?[\d.]+:(\d+)", line):
                ports[m.group(1)] = int(m.group(2))
        d = Daemon(proc, ports, lines)

        async def pump() -> None:
            assert proc.stderr is not None
            while line := (await proc.stderr.readline()).decode():
                lines.append(line)

        d._pump = asyncio.create_task(pump())
        yield d
    finally:
        await stop_process(proc, 10)


async def http_get(port: int, path: str, raw: bytes | None = None) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw if raw is not None else f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the one sample of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_serve_admin_metrics_readiness_with_real_tunnels(certs: Path) -> None:
    echo, echo_port = await start_echo_server()
    target = f"127.0.0.1:{echo_port}"
    args = ("--log-format", "json", "serve", "--certs", str(certs / "bob"), "--listen", "127.0.0.1:0", *EPHEMERAL)
    try:
        async with daemon(*args, listeners=("serve:", "admin", "metrics", "readiness")) as bob:
            assert await bob.get("readiness", "/healthz/ready") == (200, "ready\n")
            alice = HboneClient(MeshTls(IdentityManager.fixed(load_bundle(certs / "alice"))))
            ep = Endpoint("127.0.0.1", bob.ports["serve:"])
            try:
                tunnel = await alice.open(target, ep)
                await tunnel.stream.send(b"x" * 1000)
                assert await tunnel.stream.readexactly(1000) == b"x" * 1000
                status, body = await bob.get("admin", "/connections")
                assert status == 200
                (conn,) = json.loads(body)
                assert conn["peer_identity"] == ALICE and conn["destination_identity"] == BOB
                assert conn["destination"] == target and conn["source"].startswith("127.0.0.1:")
                assert conn["bytes_to_destination"] == 1000 and conn["bytes_from_destination"] == 1000
                assert conn["age_seconds"] >= 0
                tunnel.write_eof()
                assert await tunnel.stream.read() == b""
            finally:
                await alice.close()
            mallory = HboneClient(MeshTls(IdentityManager.fixed(load_bundle(certs / "mallory"))))
            try:
                with pytest.raises(Exception, match="401"):
                    await mallory.open(target, ep)
                # A tunnel to bob's own HBONE port trips the self-call limit (503).
                with pytest.raises(Exception, match="503"):
                    await mallory.open(f"127.0.0.1:{bob.ports['serve:']}", ep)
            finally:
                await mallory.close()
            await bob.access_records(3)
            status, metrics = await bob.get("metrics", "/metrics")
            assert status == 200
            ok = {"reporter": "destination", "source_principal": ALICE, "destination_principal": BOB}
            assert sample(metrics, "istio_tcp_connections_opened_total", **ok, response_flags="-") == 1
            assert sample(metrics, "istio_tcp_connections_closed_total", **ok, response_flags="-") == 1
            assert sample(metrics, "istio_tcp_received_bytes_total", **ok) == 1000
            assert sample(metrics, "istio_tcp_sent_bytes_total", **ok) == 1000
            denied = {"source_principal": MALLORY, "response_flags": "DENY"}
            assert sample(metrics, "istio_tcp_connections_opened_total", **denied) == 1
            assert sample(metrics, "istio_tcp_connections_closed_total", **denied) == 1
            expiry = load_bundle(certs / "bob").not_after.timestamp()
            assert sample(metrics, "hbone_cert_expiry_timestamp_seconds", identity=BOB) == pytest.approx(expiry)
            assert sample(metrics, "hbone_limit_trips_total", limit="self_call") == 1
            assert sample(metrics, "istio_tcp_connections_closed_total", response_flags="CONNECT") == 1
            assert (await bob.get("admin", "/connections"))[1].strip() == "[]"

            status, body = await bob.get("admin", "/config_dump")
            dump = json.loads(body)
            assert status == 200 and dump["identities"][0]["identity"] == BOB
            assert dump["identities"][0]["expires_in_seconds"] > 0
            assert dump["authorization"]["mode"] == "same-namespace"
            assert any(str(bob.ports["serve:"]) in listener for listener in dump["listeners"])

            status, body = await bob.get("admin", "/logging?level=hbone.net=debug")
            assert status == 200 and json.loads(body)["hbone.net"] == "debug"
            assert (await bob.get("admin", "/logging?level=loud"))[0] == 400

            # Access records are bare JSON objects on their own lines; other lines are JSON too (--log-format json).
            records = await bob.access_records(3)
            assert {(r["src_identity"], r["status"]) for r in records} == {(ALICE, 200), (MALLORY, 401), (MALLORY, 503)}
            assert all(json.loads(line) for line in bob.lines if line.startswith("{"))

            # Requests are bounded: a huge head gets 431, a body-carrying method 405, an unknown path 404.
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
            assert (await http_get(bob.ports["admin"], "", raw=huge))[0] == 431
            assert (await http_get(bob.ports["admin"], "", raw=b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 405
            assert (await bob.get("readiness", "/config_dump"))[0] == 404
    finally:
        echo.close()


async def test_busy_admin_port_is_a_one_line_error(certs: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *HBONE, "serve", "--certs", str(certs / "bob"), "--listen", "127.0.0.1:0",
            "--admin", f"127.0.0.1:{port}", "--metrics", "off", "--readiness", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert (
        lines[-1]
        == f"hbone: error: --admin 127.0.0.1:{port}: address in use (choose another HOST:PORT, or --admin off)"
    )
    assert "Traceback" not in err.decode()


async def test_socks5_reports_as_source(certs: Path) -> None:
    echo, echo_port = await start_echo_server()
    try:
        async with daemon(
            "serve", "--certs", str(certs / "bob"), "--listen", "127.0.0.1:0", "--admin", "off", "--metrics", "off",
            "--readiness", "off", listeners=("serve:",),
        ) as bob:  # fmt: skip
            via = f"127.0.0.1:{bob.ports['serve:']}"
            async with daemon(
                "socks5", "--listen", f"127.0.0.1:{free_port()}", "--via", via, "--expect-identity", BOB,
                "--certs", str(certs / "alice"),
                *EPHEMERAL, listeners=("socks5", "admin", "metrics"),
            ) as socks:  # fmt: skip
                reader, writer = await asyncio.open_connection("127.0.0.1", socks.ports["socks5"])
                writer.write(b"\x05\x01\x00")
                assert await reader.readexactly(2) == b"\x05\x00"
                writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port))
                assert (await reader.readexactly(10))[1] == 0
                writer.write(b"y" * 300)
                assert await reader.readexactly(300) == b"y" * 300
                (conn,) = json.loads((await socks.get("admin", "/connections"))[1])
                assert conn["peer_identity"] == BOB and conn["direction"] == "socks5"
                writer.write_eof()
                assert await reader.read() == b""
                writer.close()
                await socks.access_records(1)
                metrics = (await socks.get("metrics", "/metrics"))[1]
                labels = {"reporter": "source", "source_principal": "unknown", "destination_principal": BOB}
                assert sample(metrics, "istio_tcp_connections_closed_total", **labels, response_flags="-") == 1
                assert sample(metrics, "istio_tcp_received_bytes_total", **labels) == 300
                dump = json.loads((await socks.get("admin", "/config_dump"))[1])
                assert dump["identities"][0]["identity"] == ALICE
                assert dump["listeners"][0]["type"] == "socks5" and dump["routes"]
    finally:
        echo.close()


async def test_forward_counts_its_tunnels(certs: Path) -> None:
    echo, echo_port = await start_echo_server()
    try:
        async with daemon(
            "serve", "--certs", str(certs / "bob"), "--listen", "127.0.0.1:0", "--admin", "off", "--metrics", "off",
            "--readiness", "off", listeners=("serve:",),
        ) as bob:  # fmt: skip
            via = f"127.0.0.1:{bob.ports['serve:']}"
            async with daemon(
                "forward", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_port}",
                "--via", via, "--expect-identity", BOB, "--certs", str(certs / "alice"), *EPHEMERAL,
                listeners=("forward:", "admin", "metrics"),
            ) as fwd:  # fmt: skip
                reader, writer = await asyncio.open_connection("127.0.0.1", fwd.ports["forward:"])
                writer.write(b"z" * 200)
                assert await reader.readexactly(200) == b"z" * 200
                (conn,) = json.loads((await fwd.get("admin", "/connections"))[1])
                assert conn["direction"] == "forward" and conn["peer_identity"] == BOB
                assert conn["bytes_to_destination"] == 200 and conn["source"].startswith("127.0.0.1:")
                writer.write_eof()
                assert await reader.read() == b""
                writer.close()
                await fwd.access_records(1)
                metrics = (await fwd.get("metrics", "/metrics"))[1]
                labels = {"reporter": "source", "destination_principal": BOB, "response_flags": "-"}
                assert sample(metrics, "istio_tcp_connections_closed_total", **labels) == 1
                assert sample(metrics, "istio_tcp_received_bytes_total", **labels) == 200
                assert sample(metrics, "istio_tcp_sent_bytes_total", **labels) == 200
    finally:
        echo.close()
