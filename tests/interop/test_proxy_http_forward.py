"""`hbone http-proxy` forwards absolute-form requests (`http_proxy=`) through the mesh: curl and Python's urllib,
honouring the environment variable, reach a web server only the mesh can name (issue 16 §6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.errors import UpstreamUnreachable
from hbone.testing import TestCA
from hbone.wire.authority import Authority
from tests.integration.test_proxy_mesh import hbone_node
from tests.peers import LOOPBACK, NO_ADMIN, ProcessPeer, arun_peer, close_server, free_port, require_binary
from tests.peers import wait_port as wait_port_peer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
SVC = "web.ns.svc.cluster.local"

URLLIB = r"""
import sys, urllib.request
get = urllib.request.urlopen(sys.argv[1], timeout=20).read().decode()
post = urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"form=1", method="POST"), timeout=20)
print(get)
print(post.read().decode())
"""


async def start_echo_http() -> tuple[asyncio.Server, int]:
    """HTTP/1.1 keep-alive origin answering `METHOD TARGET host=HOST body=BODY conn=N` (N: requests so far on
    this connection), so a test sees what the proxy sent and whether it reused the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                n += 1
                text = f"{method} {target} host={fields.get('host')} body={body.decode()} conn={n}"
                text += " proxy-auth-leaked" if "proxy-authorization" in fields else ""
                data = text.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    return server, int(server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def proxy(tmp_path: Path, *extra: str) -> AsyncIterator[int]:
    ca = TestCA()
    web, web_port = await start_echo_http()

    async def resolve(target: Authority) -> tuple[str, int]:
        if str(target) != f"{SVC}:80":
            raise UpstreamUnreachable(f"no service {target}")
        return LOOPBACK, web_port

    certs = ca.write(tmp_path / "client", "ns", "client")
    port = free_port()
    try:
        async with hbone_node(ca, "web", "ns", resolve=resolve) as node:
            args = ["http-proxy", "--listen", f"{LOOPBACK}:{port}", "--via", f"{LOOPBACK}:{node.port}",
                    "--expect-identity", str(node.identity)]  # fmt: skip
            cmd = [sys.executable, "-m", "hbone.cli", *args, "--certs", str(certs), *extra, *NO_ADMIN]
            async with ProcessPeer(cmd, name="hbone-http-proxy") as peer:
                await wait_port_peer(LOOPBACK, port, timeout=15, peer=peer)
                yield port
    finally:
        await close_server(web)


def proxy_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    return {**env, "http_proxy": url}


async def test_curl_and_urllib_through_http_proxy_env(tmp_path: Path) -> None:
    curl = require_binary("curl")
    async with proxy(tmp_path) as port:
        env = proxy_env(f"http://{LOOPBACK}:{port}")
        url = f"http://{SVC}/hello?x=1"
        # Two URLs in one curl run: the second goes over the same client connection (keep-alive through the proxy).
        proc = await arun_peer([curl, "-sS", "--max-time", "30", url, "-d", "a=b", url], timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"POST /hello?x=1 host={SVC} body=a=b conn=1POST /hello?x=1 host={SVC} body=a=b conn=2"
        proc = await arun_peer([curl, "-sS", "--max-time", "30", url], timeout=60, env=env)
        assert proc.stdout == f"GET /hello?x=1 host={SVC} body= conn=1", proc.stderr

        proc = await arun_peer([sys.executable, "-c", URLLIB, f"http://{SVC}/form"], timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        got, posted = proc.stdout.splitlines()
        assert got == f"GET /form host={SVC} body= conn=1"
        assert posted == f"POST /form host={SVC} body=form=1 conn=1"

        proc = await arun_peer([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{SVC}:81/"], env=env)
        assert proc.stdout == "502", proc.stderr  # the HBONE server cannot reach it: a reason, not a hang
        proc = await arun_peer([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", f"{LOOPBACK}:{port}",
                                f"https://{SVC}/"])  # fmt: skip
        assert proc.returncode != 0  # curl uses CONNECT for https: that path is the CONNECT proxy's (tested there)


async def test_forwarded_requests_need_the_proxy_credentials(tmp_path: Path) -> None:
    curl = require_binary("curl")
    async with proxy(tmp_path, "--user", "u:secret") as port:
        url = f"http://{SVC}/"
        code = ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"]
        proc = await arun_peer([curl, *code, url], env=proxy_env(f"http://{LOOPBACK}:{port}"))
        assert proc.stdout == "407", proc.stderr
        proc = await arun_peer([curl, "-sS", url], env=proxy_env(f"http://u:secret@{LOOPBACK}:{port}"))
        assert proc.stdout == f"GET / host={SVC} body= conn=1", proc.stderr  # and the credentials stay with us
