"""HBONE interop with a real Envoy, both ways (recipes in docs/interop.md).

1. Envoy is the HBONE client (tcp_proxy + tunneling_config, mTLS h2 upstream) → our server → echo.
2. Our client → Envoy as the HBONE server (CONNECT terminated, ORIGINAL_DST by :authority) → echo.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.errors import PeerIdentityError
from hbone.identity import IdentityManager, load_bundle
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import TestCA
from hbone.tls import MeshTls
from tests.peers import Envoy, envoy_hbone_client_config, envoy_hbone_server_config

pytestmark = pytest.mark.timeout(90)


def _mesh(dir_: Path) -> MeshTls:
    return MeshTls(IdentityManager.fixed(load_bundle(dir_)))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = TestCA()
    return {sa: ca.write(tmp_path / sa, "default", sa) for sa in ("client", "server", "envoy")}


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    async def send() -> None:
        for i in range(0, len(payload), 65536):
            writer.write(payload[i : i + 65536])
            await writer.drain()
        writer.write_eof()

    async def recv() -> bytes:
        return await reader.read(-1)

    _, got = await asyncio.gather(send(), recv())
    return got


async def test_envoy_client_through_our_server(pki: dict[str, Path], echo_port: int) -> None:
    server_tls = _mesh(pki["server"])
    seen: list[list[tuple[bytes, bytes]]] = []
    handler = InboundHandler(InboundConfig(tls=server_tls))

    async def recording(stream, peer):  # type: ignore[no-untyped-def]
        seen.append(list(stream.request_headers))
        assert peer.identity is not None and str(peer.identity) == "spiffe://cluster.local/ns/default/sa/envoy"
        await handler(stream, peer)

    server = HboneServer(server_tls, recording)  # type: ignore[arg-type]
    _, hbone_port = await server.listen("127.0.0.1", 0)
    envoy_dir = pki["envoy"]
    cfg = envoy_hbone_client_config(
        target=f"127.0.0.1:{echo_port}",
        hbone_port=hbone_port,
        cert_chain=envoy_dir / "cert-chain.pem",
        key=envoy_dir / "key.pem",
        root_cert=envoy_dir / "root-cert.pem",
        peer_san="spiffe://cluster.local/ns/default/sa/server",
    )
    try:
        async with Envoy(cfg) as envoy:
            await envoy.wait_ready()
            port = await envoy.listener_port("hbone_out")
            payload = os.urandom(2 * 1024 * 1024)
            for _ in range(3):  # several tunnels; Envoy pools them on one HTTP/2 connection
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                got = await asyncio.wait_for(_pump(reader, writer, payload), 30)
                writer.close()
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert await envoy.wait_stat("cluster.hbone_upstream.upstream_cx_total", lambda v: int(v) >= 1) >= 1
    finally:
        await server.close()
    assert len(seen) == 3
    # Envoy sends only :method and :authority, exactly ztunnel's CONNECT
    assert seen[0] == [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{echo_port}".encode())]


async def test_our_client_through_envoy_server(pki: dict[str, Path], echo_port: int) -> None:
    envoy_dir = pki["envoy"]
    cfg = envoy_hbone_server_config(
        cert_chain=envoy_dir / "cert-chain.pem", key=envoy_dir / "key.pem", root_cert=envoy_dir / "root-cert.pem"
    )
    async with Envoy(cfg) as envoy:
        await envoy.wait_ready()
        port = await envoy.listener_port("hbone_in")
        client = HboneClient(_mesh(pki["client"]))
        try:
            ep = Endpoint.parse(f"127.0.0.1:{port}", identities=["spiffe://cluster.local/ns/default/sa/envoy"])
            payload = os.urandom(3 * 1024 * 1024 + 5)
            for _ in range(3):
                tunnel = await client.open(f"127.0.0.1:{echo_port}", ep)
                assert tunnel.status == 200
                assert str(tunnel.peer_identity) == "spiffe://cluster.local/ns/default/sa/envoy"

                async def send(t=tunnel) -> None:  # type: ignore[no-untyped-def]
                    for i in range(0, len(payload), 65536):
                        t.write(payload[i : i + 65536])
                        await t.drain()
                    t.write_eof()

                async def recv(t=tunnel) -> bytes:  # type: ignore[no-untyped-def]
                    out = bytearray()
                    while chunk := await t.read():
                        out += chunk
                    return bytes(out)

                _, got = await asyncio.wait_for(asyncio.gather(send(), recv()), 30)
                assert got == payload
            assert client.pool.dials == 1  # all three tunnels shared one pooled connection
            # Envoy is not the identity we expect → refused on our side after the handshake
            wrong = Endpoint.parse(f"127.0.0.1:{port}", identities=["spiffe://cluster.local/ns/default/sa/other"])
            with pytest.raises(PeerIdentityError):
                await client.open(f"127.0.0.1:{echo_port}", wrong)
        finally:
            await client.close()
