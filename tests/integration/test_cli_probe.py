"""`hbone probe` names the step that failed and prints only HTTP statuses it received (issue 16 §5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hbone.testing import TestCA, start_echo_server
from tests.peers import NO_ADMIN

pytestmark = pytest.mark.timeout(60)
HBONE = [sys.executable, "-m", "hbone.cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
SERVER_ID = "spiffe://cluster.local/ns/ns/sa/server"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("certs")
    mesh, other = TestCA(), TestCA()
    mesh.write(base / "server", "ns", "server")
    mesh.write(base / "alice", "ns", "alice")
    other.write(base / "stranger", "ns", "alice")  # trusts only its own CA
    # Trusts the server's CA too, but its certificate is signed by a CA the server does not know.
    other.write(base / "outsider", "ns", "alice")
    roots = (base / "outsider" / "root-cert.pem").read_text() + (base / "server" / "root-cert.pem").read_text()
    (base / "outsider" / "root-cert.pem").write_text(roots)
    return base


@contextlib.asynccontextmanager
async def server(certs: Path) -> AsyncIterator[tuple[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        *HBONE, "serve", "--certs", str(certs / "server"), "--listen", "127.0.0.1:0", "--h2c-listen", "127.0.0.1:0",
        *NO_ADMIN, stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        m = re.search(r"mtls=(\S+) h2c=(\S+)", line)
        assert m, line
        yield m.group(1), m.group(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)


async def probe(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        *HBONE, "probe", *args, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, json.loads(out), err.decode()


async def test_probe_names_the_failing_step(certs: Path) -> None:
    echo, port = await start_echo_server()
    target = f"127.0.0.1:{port}"
    try:
        async with server(certs) as (mtls, h2c):
            rc, ok, _ = await probe(mtls, "--target", target, "--certs", str(certs / "alice"))
            assert rc == 0 and ok["status"] == 200 and ok["peer_identity"] == SERVER_ID, ok

            rc, r, _ = await probe(mtls, "--target", target, "--certs", str(certs / "stranger"))
            assert rc == 1 and "status" not in r, r
            assert r["step"] == "tls" and r["refused_by"] == "us", r
            assert "not signed by your roots" in r["error"], r
            assert r["peer_identity"] == SERVER_ID, r  # who the server claims to be, read without verifying

            rc, r, _ = await probe(mtls, "--target", target, "--certs", str(certs / "outsider"))
            assert rc == 1 and "status" not in r, r
            assert r["step"] == "tls" and r["refused_by"] == "server", json.dumps(r)
            assert "refused our certificate" in r["error"] or "may have refused our certificate" in r["error"], r

            want = "spiffe://cluster.local/ns/ns/sa/someone-else"
            rc, r, _ = await probe(mtls, "--target", target, "--certs", str(certs / "alice"), "--expect-identity", want)
            assert rc == 1 and "status" not in r, r
            assert r["step"] == "identity" and r["error"] == f"expected identity {want}, got {SERVER_ID}", r

            rc, r, _ = await probe(mtls, "--target", target, "--plaintext")
            assert rc == 1 and "status" not in r, r
            assert r["step"] == "http2" and "mTLS port" in r["error"], r

            rc, r, _ = await probe(h2c, "--target", target, "--certs", str(certs / "alice"))
            assert rc == 1 and "status" not in r, r
            assert r["step"] == "tls" and "does not speak TLS" in r["error"], r

            rc, r, _ = await probe(mtls, "--target", "127.0.0.1:1", "--certs", str(certs / "alice"))
            assert rc == 1 and r["status"] == 503 and r["step"] == "connect", r  # a status the server did send
    finally:
        echo.close()
