"""curl and nghttp (real clients) against the per-request ingress: two Hosts / :authorities on one client
connection reach two different backends behind two HBONE servers; HTTP/1.1 keep-alive, h2c prior knowledge,
and TLS termination with ALPN h2 and http/1.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbone.testing import TestCA
from tests.integration.test_proxy_gateways import write_pem
from tests.integration.test_proxy_ingress_http import two_backends
from tests.peers import arun_peer, require_binary

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


async def curl(*args: str) -> str:
    cmd = [str(require_binary("curl")), "-sS", "--max-time", "20", "--noproxy", "*", *args]
    proc = await arun_peer(cmd, timeout=40)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("proto", ["--http1.1"])
async def test_curl_two_hosts_on_one_connection(proto: str) -> None:
    # h2c prior knowledge is not parametrized: curl 7.88.1 fails every reused prior-knowledge connection with
    # "(16) Error in the HTTP2 framing layer", against nghttpd as well; h2 reuse is shown over TLS below and by
    # our own h2 client in tests/integration/test_proxy_ingress_http.py.
    async with two_backends(TestCA()) as s:
        base = f"http://127.0.0.1:{s.port}"
        out = await curl(
            proto, f"{base}/one", "-H", "Host: a.example", "-w", "[%{num_connects} %{http_version}]\n",
            "--next", proto, f"{base}/two", "-H", "Host: b.example", "-w", "[%{num_connects} %{http_version}]\n",
            "--next", proto, f"{base}/three", "-H", "Host: a.example", "-d", "posted", "-w", "[%{num_connects}]\n",
        )  # fmt: skip
        version = "1.1" if proto == "--http1.1" else "2"
        assert out == (
            f"A GET a.example/one body=0\n[1 {version}]\n"
            f"B GET b.example/two body=0\n[0 {version}]\n"  # 0 new connections: the same client connection
            "A POST a.example/three body=6\n[0]\n"
        )


async def test_nghttp_authority_and_trailers() -> None:
    nghttp = require_binary("nghttp")
    async with two_backends(TestCA()) as s:
        proc = await arun_peer(
            [str(nghttp), "-v", f"http://127.0.0.1:{s.port}/n", "-H", ":authority: b.example"], timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert "B GET b.example/n body=0" in proc.stdout
        assert "x-served-by: B" in proc.stdout  # the backend's trailers reached the client


async def test_curl_tls_terminated_alpn_h2_and_http11(tmp_path: Path) -> None:
    ca = TestCA()
    chain, key, root = write_pem(tmp_path, "front", ca.issue("ns", "front", dns=("a.example", "b.example")))
    certs = tmp_path / "front-tls"
    certs.mkdir()
    (certs / "tls.crt").write_bytes(chain.read_bytes())
    (certs / "tls.key").write_bytes(key.read_bytes())
    async with two_backends(ca) as s:
        server = await s.ingress.start_tls_terminate("127.0.0.1", 0, {"a.example": certs}, http=True)
        port = int(server.sockets[0].getsockname()[1])
        try:
            resolve = ["--cacert", str(root), "--resolve", f"a.example:{port}:127.0.0.1",
                       "--resolve", f"b.example:{port}:127.0.0.1"]  # fmt: skip
            out = await curl(
                "--http2", *resolve, f"https://a.example:{port}/tls", "-w", "[%{http_version} %{num_connects}]\n",
                "--next", "--http2", *resolve, f"https://a.example:{port}/other", "-H", "Host: b.example",
                "-w", "[%{http_version} %{num_connects}]",
            )  # fmt: skip
            # Two :authorities on one TLS connection (ALPN h2), each routed to its own backend.
            assert out == f"A GET a.example:{port}/tls body=0\n[2 1]\nB GET b.example/other body=0\n[2 0]"
            out = await curl("--http1.1", *resolve, f"https://b.example:{port}/tls", "-w", "[%{http_version}]")
            assert out == f"B GET b.example:{port}/tls body=0\n[1.1]"
        finally:
            server.close()
