"""curl through our SOCKS5 and CONNECT proxies (the real `hbone` CLI) to an HTTP server behind a remote HBONE
server, next to Debian's microsocks and tinyproxy on the same requests; throughput ratios are reported."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.errors import UpstreamUnreachable
from hbone.testing import TestCA
from hbone.wire.authority import Authority
from tests.integration.test_proxy_mesh import hbone_node
from tests.peers import LOOPBACK, ProcessPeer, arun_peer, close_server, free_port, require_binary, start_http_server
from tests.peers import wait_port as wait_port_peer

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

SVC = "web.ns.svc.cluster.local"
BODY = b"0123456789abcdef" * (8 * 1024 * 1024 // 16)  # 8 MiB per request


def hbone_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hbone.cli", *args, "--admin", "off", "--metrics", "off", "--readiness", "off"]


@contextlib.asynccontextmanager
async def remote_web(tmp_path: Path) -> AsyncIterator[tuple[int, int, Path, str]]:
    """(HBONE port, HTTP port, client cert dir, server identity): HTTP server behind an in-process HBONE server
    that resolves SVC to it."""
    ca = TestCA()
    http, http_port = await start_http_server(BODY, content_type="application/octet-stream")

    async def resolve(target: Authority) -> tuple[str, int]:
        if str(target) != f"{SVC}:80":
            raise UpstreamUnreachable(f"no service {target}")
        return LOOPBACK, http_port

    certs = ca.write(tmp_path / "client", "ns", "client")
    try:
        async with hbone_node(ca, "web", "ns", resolve=resolve) as node:
            yield node.port, http_port, certs, str(node.identity)
    finally:
        await close_server(http)


async def curl(args: list[str], url: str) -> tuple[int, bytes, float, str]:
    curl_bin = require_binary("curl")
    started = time.perf_counter()
    # --noproxy "": the loopback env sets NO_PROXY=*, which would make curl bypass the proxy we are testing
    cmd = [curl_bin, "-sS", "--max-time", "30", "--noproxy", "", "-o", "/dev/stdout", *args, url]
    proc = await arun_peer(cmd, timeout=60)
    elapsed = time.perf_counter() - started
    return proc.returncode, proc.stdout.encode("latin-1", "replace"), elapsed, proc.stderr


async def timed(args: list[str], url: str, rounds: int = 3) -> float:
    """Best-of throughput in MiB/s for `rounds` downloads of BODY."""
    best = 0.0
    for _ in range(rounds):
        code, out, elapsed, err = await curl(args, url)
        assert code == 0 and len(out) == len(BODY), err
        best = max(best, len(BODY) / elapsed / 2**20)
    return best


async def test_curl_socks5_and_connect_vs_microsocks_tinyproxy(tmp_path: Path, record_property: object) -> None:
    microsocks, tinyproxy = require_binary("microsocks"), require_binary("tinyproxy")
    async with remote_web(tmp_path) as (hport, http_port, certs, server_id):
        via = ["--via", f"{LOOPBACK}:{hport}", "--certs", str(certs), "--expect-identity", server_id]
        s_port, c_port, m_port, t_port = free_port(), free_port(), free_port(), free_port()
        conf = tmp_path / "tinyproxy.conf"
        conf.write_text(f"Port {t_port}\nListen {LOOPBACK}\nAllow {LOOPBACK}\nTimeout 30\nMaxClients 8\n")
        peers = [
            ProcessPeer(hbone_cli("socks5", "--listen", f"{LOOPBACK}:{s_port}", *via), name="hbone-socks5"),
            ProcessPeer(hbone_cli("http-proxy", "--listen", f"{LOOPBACK}:{c_port}", *via), name="hbone-connect"),
            ProcessPeer([microsocks, "-i", LOOPBACK, "-p", str(m_port)]),
            ProcessPeer([tinyproxy, "-d", "-c", conf]),
        ]
        async with contextlib.AsyncExitStack() as stack:
            for peer, port in zip(peers, (s_port, c_port, m_port, t_port), strict=True):
                await stack.enter_async_context(peer)
                await wait_port_peer(LOOPBACK, port, timeout=15, peer=peer)
            ours_socks = ["--socks5-hostname", f"{LOOPBACK}:{s_port}"]
            ours_connect = ["-p", "-x", f"http://{LOOPBACK}:{c_port}"]
            direct = f"http://{LOOPBACK}:{http_port}/"
            mesh = f"http://{SVC}/"  # only the mesh knows this name: the proxy must not resolve it locally
            for args in (ours_socks, ours_connect):
                code, out, _, err = await curl(args, mesh)
                assert code == 0 and out == BODY, err + peers[0].log_tail() + peers[1].log_tail()
            code, _, _, err = await curl(["-p", "-x", f"http://{LOOPBACK}:{c_port}"], f"http://{SVC}:81/")
            assert code != 0 and "502" in err, err  # the HBONE server cannot connect -> our proxy answers 502
            socks_ours, socks_ref = (
                await timed(ours_socks, mesh),
                await timed(["--socks5", f"{LOOPBACK}:{m_port}"], direct),
            )
            conn_ours, conn_ref = (
                await timed(ours_connect, mesh),
                await timed(["-p", "-x", f"http://{LOOPBACK}:{t_port}"], direct),
            )
    report = (
        f"SOCKS5 hbone {socks_ours:.0f} MiB/s vs microsocks {socks_ref:.0f} MiB/s "
        f"(ratio {socks_ours / socks_ref:.2f}); "
        f"CONNECT hbone {conn_ours:.0f} MiB/s vs tinyproxy {conn_ref:.0f} MiB/s (ratio {conn_ours / conn_ref:.2f})"
    )
    print(report)
    record_property("throughput", report)  # type: ignore[operator]
