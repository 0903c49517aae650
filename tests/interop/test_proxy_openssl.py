"""openssl s_client with an Istio SNI through our :15443 gateway (the real CLI) to a TLS echo behind HBONE."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from hbone.testing import TestCA
from tests.integration.test_proxy_gateways import ISTIO_SNI, client_hello_bytes, fixed, tls_echo
from tests.integration.test_proxy_mesh import hbone_node
from tests.peers import LOOPBACK, NO_ADMIN, ProcessPeer, free_port, require_binary, wait_port

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]
IO = 10.0


def refused(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, return whatever the gateway answered before closing."""
    with socket.create_connection((LOOPBACK, port), timeout=IO) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


async def test_openssl_s_client_through_sni_gateway(tmp_path: Path) -> None:
    openssl = require_binary("openssl")
    ca = TestCA()
    seen: list[str | None] = []
    async with tls_echo(ca, tmp_path, seen) as (eport, root):  # noqa: SIM117 - the node needs the echo's port
        async with hbone_node(ca, "echo", "ns", resolve=fixed(LOOPBACK, eport).resolve) as node:
            certs = ca.write(tmp_path / "gw", "istio-system", "eastwest")
            gport = free_port()
            args = ["--listen", f"{LOOPBACK}:{gport}", "--via", node.address, "--certs", str(certs)]
            args += ["--expect-identity", str(node.identity)]
            async with ProcessPeer(
                [sys.executable, "-m", "hbone.cli", "sni-gateway", *args, *NO_ADMIN], name="sni-gw"
            ) as gw:
                await wait_port(LOOPBACK, gport, timeout=15, peer=gw)
                proc = await asyncio.create_subprocess_exec(
                    openssl, "s_client", "-connect", f"{LOOPBACK}:{gport}", "-servername", ISTIO_SNI,
                    "-CAfile", str(root), "-verify_return_error", "-quiet", "-no_ign_eof",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(b"ping through 15443\n")
                    await proc.stdin.drain()
                    line = await asyncio.wait_for(proc.stdout.readline(), IO)
                    assert line == b"ping through 15443\n", gw.log_tail()
                finally:
                    proc.stdin.close()
                    try:
                        await asyncio.wait_for(proc.wait(), IO)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                # The echo verified nothing was altered: its handshake saw the client's own SNI, and the
                # client verified the echo's certificate (-verify_return_error) through the gateway.
                assert seen == [ISTIO_SNI]
                assert node.inbound.total == 1

                alert = bytes((21, 3, 1, 0, 2, 2, 50))
                assert await asyncio.to_thread(refused, gport, b"SSH-2.0-OpenSSH_9.2\r\n") == alert
                assert await asyncio.to_thread(refused, gport, client_hello_bytes(ISTIO_SNI)[:60]) == b""
                no_route = await asyncio.create_subprocess_exec(
                    openssl, "s_client", "-connect", f"{LOOPBACK}:{gport}", "-servername", "other.example.org",
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await asyncio.wait_for(no_route.communicate(), IO)
                assert no_route.returncode != 0 and b"alert" in err.lower(), err
                # garbage and truncated hellos never reached the mesh; the unknown name did (--via routes
                # everything) and the far side's 503 became a TLS alert
                assert node.inbound.total == 2
                gw.check_running()
