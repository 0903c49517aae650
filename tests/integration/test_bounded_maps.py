"""Maps keyed by peer input are bounded by what is alive: the HBONE client's per-connection peer identities and
the TLS-terminating ingress's per-handshake SNI are forgotten with their connection (main kept one entry per
connection ever made, so a peer that connects and fails repeatedly grew them without bound)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
from pathlib import Path
from typing import Any

import pytest

from hbone.client import HboneClient
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from hbone.grpc.health import WATCH, ServingStatus, health_messages
from hbone.grpc.server import GrpcServer
from hbone.net.pool import PoolKey
from hbone.proxy.frontend import Dialer
from hbone.proxy.ingress import Ingress
from hbone.proxy.routing import RouteTable
from hbone.testing import TestCA
from tests.integration.test_proxy_gateways import write_pem
from tests.integration.test_proxy_mesh import hbone_node

pytestmark = pytest.mark.timeout(60)
N = 12


async def test_client_forgets_peers_of_closed_connections() -> None:
    ca = TestCA()
    async with hbone_node(ca, "bob", "ns") as node:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        key = PoolKey(str(client.identity), (str(node.identity),), "127.0.0.1", node.port, "")
        conns = [await client._dial(key) for _ in range(N)]
        assert all(client.peer_identity(c) == node.identity for c in conns)
        for conn in conns:
            await conn.close()
        del conns, conn
        gc.collect()
        assert len(client._peers) == 0  # main: N entries, forever
        await client.close()


async def test_ingress_forgets_sni_of_failed_handshakes(tmp_path: Path) -> None:
    ca = TestCA()
    certdir = tmp_path / "cert"
    chain, key, _ = write_pem(tmp_path / "front", "front", ca.issue("ns", "front", dns=("shop.example.com",)))
    certdir.mkdir()
    (certdir / "tls.crt").write_bytes(chain.read_bytes())
    (certdir / "tls.key").write_bytes(key.read_bytes())
    ingress = Ingress(Dialer(None, RouteTable()), hosts={})
    server = await ingress.start_tls_terminate("127.0.0.1", 0, {"shop.example.com": certdir})
    port = server.sockets[0].getsockname()[1]
    untrusting = ssl.create_default_context()  # does not trust the ingress: fails after the server's SNI callback
    try:
        for _ in range(N):
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=untrusting, server_hostname="shop.example.com"), 10
                )
                writer.close()
        # The server side finishes each failed handshake on its own schedule: wait (bounded) until it has.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while ingress._sni and loop.time() < deadline:
            gc.collect()
            await asyncio.sleep(0.05)
        assert len(ingress._sni) == 0  # main: one entry per failed handshake, forever
    finally:
        server.close()
        await ingress.close()


async def test_health_watch_of_made_up_names_leaves_nothing() -> None:
    grpc = GrpcServer()
    host, port = await grpc.listen()
    request, response = health_messages()
    codecs: dict[str, Any] = {"request_codec": ProtoCodec(request), "response_codec": ProtoCodec(response)}
    try:
        async with Channel(f"{host}:{port}") as ch:
            for i in range(N):
                watch = ch.server_stream(WATCH, request(service=f"made-up-{i}"), **codecs)
                assert (await asyncio.wait_for(anext(watch), 10)).status == ServingStatus.SERVICE_UNKNOWN
                await watch.aclose()  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20  # the server ends each cancelled call on its own schedule
            while grpc.health._changed and loop.time() < deadline:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.05)
            assert grpc.health._changed == {}  # main: one entry per name ever watched
    finally:
        await grpc.shutdown(0.5)
