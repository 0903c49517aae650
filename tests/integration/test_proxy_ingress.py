"""Ingress listeners over HBONE (TCP, TLS passthrough, TLS termination) and PROXY v2 inbound; HTTP per request is in
test_proxy_ingress_http."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.proxy.frontend import Dialer
from hbone.proxy.inbound import InboundConfig
from hbone.proxy.ingress import Ingress, parse_hosts
from hbone.proxy.proxyproto import ProxyProtocolInbound
from hbone.proxy.routing import RouteTable
from hbone.server import HboneServer
from hbone.testing import TestCA
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.proxyv2 import ProxyV2Reader
from tests.integration.test_proxy_gateways import tls_echo, write_pem
from tests.integration.test_proxy_mesh import IO, echo_server, hbone_node, serving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


async def exchange(port: int, data: bytes, **kw: object) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, **kw)  # type: ignore[arg-type]
    writer.write(data)
    out = await asyncio.wait_for(reader.read(len(data)), IO)
    while len(out) < len(data) and (chunk := await asyncio.wait_for(reader.read(len(data)), IO)):
        out += chunk
    writer.close()
    return out


async def test_ingress_listeners(ca: TestCA, tmp_path: Path) -> None:
    async with echo_server() as eport, tls_echo(ca, tmp_path / "tls") as (tport, root):
        targets = {"shop.ns.svc.cluster.local:80": eport, "tls.ns.svc.cluster.local:443": tport}

        async def resolve(target: Authority) -> tuple[str, int]:
            return "127.0.0.1", targets[str(target)]

        async with hbone_node(ca, "shop", "ns", resolve=resolve) as node:
            client = HboneClient(ca.mesh_tls("istio-system", "ingress"))
            opener = Dialer(client, RouteTable.via(node.address, [str(node.identity)]))
            ingress = Ingress(
                opener,
                hosts=parse_hosts(
                    {
                        "shop.example.com": "shop.ns.svc.cluster.local:80",
                        "tls.example.com": "tls.ns.svc.cluster.local:443",
                    }
                ),
            )
            target = parse_authority("shop.ns.svc.cluster.local:80")
            async with serving(lambda: ingress.start_tcp("127.0.0.1", 0, target)) as p:
                assert await exchange(p, b"raw tcp") == b"raw tcp"
            async with serving(lambda: ingress.start_tls_passthrough("127.0.0.1", 0)) as p:
                ctx = ssl.create_default_context(cafile=root)
                ctx.check_hostname = False
                assert await exchange(p, b"tls passthrough", ssl=ctx, server_hostname="tls.example.com") == (
                    b"tls passthrough"
                )
            certdir = tmp_path / "shop-cert"
            chain, key, front_root = write_pem(
                tmp_path / "front", "front", ca.issue("ns", "front", dns=("shop.example.com",))
            )
            certdir.mkdir()
            (certdir / "tls.crt").write_bytes(chain.read_bytes())
            (certdir / "tls.key").write_bytes(key.read_bytes())
            async with serving(lambda: ingress.start_tls_terminate("127.0.0.1", 0, {"shop.example.com": certdir})) as p:
                ctx = ssl.create_default_context(cafile=front_root)
                assert await exchange(p, b"terminated", ssl=ctx, server_hostname="shop.example.com") == b"terminated"
            await client.close()
            assert node.inbound.total == 3  # every routed connection went over HBONE (HTTP: test_proxy_ingress_http)


async def test_proxy_v2_header_with_client_identity(ca: TestCA) -> None:
    got: asyncio.Future[tuple[str | None, str]] = asyncio.get_running_loop().create_future()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header_reader = ProxyV2Reader()
        while (header := header_reader.feed(await reader.read(4096))) is None:
            pass
        got.set_result((header.client_identity, f"{header.source[0]}" if header.source else ""))
        writer.write(b"ok")
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    app_port = int(server.sockets[0].getsockname()[1])
    tls = ca.mesh_tls("ns", "app")
    hb = HboneServer(tls, ProxyProtocolInbound(InboundConfig(own_ports=frozenset(), tls=tls)))
    _, port = await hb.listen("127.0.0.1", 0)
    client = HboneClient(ca.mesh_tls("ns", "client"))
    try:
        tunnel = await client.open(f"127.0.0.1:{app_port}", Endpoint("127.0.0.1", port))
        assert await asyncio.wait_for(tunnel.read(), IO) == b"ok"
        identity, src = await asyncio.wait_for(got, IO)
        assert identity == str(ca.spiffe("ns", "client")) and src == "127.0.0.1"
    finally:
        await client.close()
        await hb.close()
        server.close()
