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


@pytest.mark.parametrize(
    ("size", "table"),
    [(16, None), (64 * 1024, None), (16, 0), (16, 256)],
    ids=["small", "64KiB", "hpack-table-0", "hpack-table-256"],
)
async def test_h2load_unary_calls(tmp_path: Path, size: int, table: int | None) -> None:
    """`table`: the HPACK table h2load's decoder allows (SETTINGS_HEADER_TABLE_SIZE): our encoder must announce the
    lower size in its next block and stay within it, or nghttp2 fails the connection (a compression error)."""
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
        "-d", str(body), *([] if table is None else [f"--header-table-size={table}"]),
        f"http://{host}:{port}{PREFIX}Unary", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
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
