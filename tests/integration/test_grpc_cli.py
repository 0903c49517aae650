"""`hbone grpc call`, `hbone grpc decode` and `hbone grpc sniff` against a live server (CLI in a subprocess)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from hbone.grpc.client import Channel
from hbone.grpc.server import GrpcServer
from hbone.grpc.testing import PREFIX, EchoService
from hbone.identity.bundle import write_bundle
from hbone.testing import TestCA
from tests.peers import wait_port

pytestmark = pytest.mark.timeout(60)


async def hbone_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hbone.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_grpc_call_plaintext_prints_headers_messages_trailers() -> None:
    server = GrpcServer()
    EchoService().register(server)
    host, port = await server.listen()
    try:
        addr = f"{host}:{port}"
        rc, out = await hbone_cli("grpc", "call", addr, PREFIX + "Unary", "--data", "68656c6c6f", "--plaintext",
                                  "-H", "x-echo-a:1", "-H", "x-echo-b-bin:00ff", "--timeout", "5")  # fmt: skip
        assert rc == 0, out
        assert "< headers" in out and ":status: 200" in out
        assert "< message #0: 5 bytes 68656c6c6f  'hello'" in out
        assert "< trailers" in out and "grpc-status: 0" in out
        assert "status: OK (0)" in out
        assert "trailing x-echo-b-bin: b'\\x00\\xff'" in out

        rc, out = await hbone_cli("grpc", "call", f"{host}:{port}", PREFIX + "Fail", "--data", "05676f6e65")
        assert rc == 1, out
        assert "status: NOT_FOUND (5): gone" in out

        stream_req = (2).to_bytes(4, "big") + b"ab"
        rc, out = await hbone_cli("grpc", "call", f"{host}:{port}", PREFIX + "ServerStream", "--data", stream_req.hex())
        assert rc == 0 and "message #1: 2 bytes" in out, out
    finally:
        await server.shutdown(0.2)


async def test_grpc_call_mtls_with_expected_identity(tmp_path: Path) -> None:
    from hbone.identity import IdentityManager
    from hbone.tls import MeshTls

    ca = TestCA()
    server_tls = MeshTls(IdentityManager.fixed(ca.issue("ns", "server")))
    write_bundle(tmp_path / "client", ca.issue("ns", "client"))
    server = GrpcServer()
    EchoService().register(server)
    host, port = await server.listen(tls=server_tls)
    try:
        certs = str(tmp_path / "client")
        rc, out = await hbone_cli("grpc", "call", f"{host}:{port}", PREFIX + "WhoAmI", "--certs", certs,
                                  "--expect-identity", str(server_tls.manager.identity))  # fmt: skip
        assert rc == 0, out
        assert "spiffe://cluster.local/ns/ns/sa/client" in out
        rc, out = await hbone_cli("grpc", "call", f"{host}:{port}", PREFIX + "WhoAmI", "--certs", certs,
                                  "--expect-identity", "spiffe://cluster.local/ns/ns/sa/other")  # fmt: skip
        assert rc == 1 and "UNAUTHENTICATED" in out, out
    finally:
        await server.shutdown(0.2)


async def test_grpc_sniff_relays_and_decodes() -> None:
    server = GrpcServer()
    EchoService().register(server)
    host, port = await server.listen()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "hbone.cli", "grpc", "sniff", "--listen", "127.0.0.1:0",
        "--upstream", f"{host}:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        sniff_port = int(first.split(" -> ")[0].rsplit(":", 1)[1])
        await wait_port("127.0.0.1", sniff_port)
        async with Channel(f"127.0.0.1:{sniff_port}") as ch:
            assert await ch.unary(PREFIX + "Unary", b"sniffed") == b"sniffed"
        seen = ""
        while "grpc-status" not in seen:
            seen += (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert "C>S" in seen and "S>C" in seen and "7 bytes 736e6966666564" in seen
    finally:
        proc.terminate()
        await proc.wait()
        await server.shutdown(0.2)


async def test_grpc_decode_capture(tmp_path: Path) -> None:
    import hpack
    from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

    from hbone.grpc.framing import encode_message
    from hbone.grpc.h2frames import CLIENT_PREFACE

    # A client capture: preface, SETTINGS, HEADERS, DATA with one message.
    fields = [(":method", "POST"), (":path", PREFIX + "Unary"), (":scheme", "http"), (":authority", "x"),
              ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
    block = hpack.Encoder().encode(fields)
    h = HeadersFrame(1, block, flags=["END_HEADERS"])
    d = DataFrame(1, encode_message(b"hello"), flags=["END_STREAM"])
    capture = tmp_path / "c2s.bin"
    capture.write_bytes(CLIENT_PREFACE + SettingsFrame(0).serialize() + h.serialize() + d.serialize())
    rc, out = await hbone_cli("grpc", "decode", str(capture))
    assert rc == 0, out
    assert "HEADERS stream=1" in out and "5 bytes 68656c6c6f" in out
