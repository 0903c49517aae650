"""nghttp2's h2load drives our gRPC server (h2c) with framed gRPC requests and must see no failures."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from hbone.grpc.framing import encode_message
from hbone.grpc.server import GrpcServer
from hbone.grpc.testing import PREFIX, EchoService
from tests.peers import require_binary

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("size", [16, 64 * 1024])
async def test_h2load_unary_calls(tmp_path: Path, size: int) -> None:
    h2load = require_binary("h2load")
    server = GrpcServer()
    service = EchoService()
    service.register(server)
    host, port = await server.listen("127.0.0.1", 0)
    body = tmp_path / "request.bin"
    body.write_bytes(encode_message(b"x" * size))
    n = 2000
    proc = await asyncio.create_subprocess_exec(
        str(h2load), "-n", str(n), "-c", "2", "-m", "10",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(body), f"http://{host}:{port}{PREFIX}Unary",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 45)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.shutdown(0.5)
    text = out.decode()
    assert proc.returncode == 0, text
    summary = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text
    )
    assert summary is not None, text
    assert summary.groups() == (str(n), str(n), str(n), "0", "0"), text
    assert "0 failed, 0 errored" in text
    assert len(service.calls) == n
