"""hbone.Mesh in one process: asyncio-style streams over tunnels (both ends see the other's verified identity),
the gRPC `Channel` over the mesh, lifecycle errors, and the lazy public exports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hbone import Mesh, TunnelReader, TunnelWriter
from hbone.errors import ConfigError, ConnectRefused, HboneError
from hbone.grpc.server import GrpcServer
from hbone.grpc.testing import PREFIX, EchoService
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.outbound import NoRoute
from hbone.server import HboneServer
from hbone.testing import TestCA

pytestmark = pytest.mark.timeout(60)
API = "spiffe://cluster.local/ns/shop/sa/api"


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca = TestCA()
    return {sa: ca.write(tmp_path / sa, ns, sa) for ns, sa in (("shop", "api"), ("shop", "web"), ("other", "x"))}


async def test_open_connection_and_serve_are_asyncio_shaped(certs: dict[str, Path]) -> None:
    seen: list[str | None] = []

    async def upper(reader: TunnelReader, writer: TunnelWriter) -> None:
        seen.append(str(writer.peer.identity))
        assert writer.peer.target == "127.0.0.1:7000"
        async for line in reader:  # line by line until the client half-closes
            writer.write(line.upper())
            await writer.drain()
        writer.write_eof()

    async with Mesh(certs["api"]) as server_mesh, Mesh(certs["web"]) as client_mesh:
        server = await server_mesh.serve(upper, host="127.0.0.1", port=0)
        via = f"127.0.0.1:{server.address[1]}"
        with pytest.raises(ConfigError, match="pass identities"):  # who should answer must be said
            await client_mesh.open_connection("127.0.0.1:7000", via=via)
        reader, writer = await client_mesh.open_connection("127.0.0.1:7000", via=via, identities=[API])
        assert str(writer.get_extra_info("peer_identity")) == "spiffe://cluster.local/ns/shop/sa/api"
        writer.writelines([b"hello\n", b"mesh\npartial"])
        writer.write_eof()
        assert await reader.readline() == b"HELLO\n"
        assert await reader.readexactly(5) == b"MESH\n"
        assert await reader.read() == b"PARTIAL"
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        assert seen == ["spiffe://cluster.local/ns/shop/sa/web"]

        # Without a control plane an IP target is reached at its own HBONE port; a name needs `via`.
        with pytest.raises(NoRoute, match="without a control plane"):
            await client_mesh.open_connection("api.shop.svc.cluster.local:80")

    async with Mesh(certs["x"]) as outsider, Mesh(certs["api"]) as server_mesh:
        server = await server_mesh.serve(upper, host="127.0.0.1", port=0)
        with pytest.raises(ConnectRefused) as refused:
            await outsider.open_connection("127.0.0.1:7000", via=f"127.0.0.1:{server.address[1]}", identities=[API])
        assert refused.value.status == 401


async def test_a_failing_handler_does_not_take_the_listener_down(certs: dict[str, Path]) -> None:
    async def broken(reader: TunnelReader, writer: TunnelWriter) -> None:
        if await reader.readexactly(1) == b"!":
            raise RuntimeError("application bug")
        writer.write(b"fine")
        writer.write_eof()

    async with Mesh(certs["api"]) as server_mesh, Mesh(certs["web"]) as client_mesh:
        server = await server_mesh.serve(broken, host="127.0.0.1", port=0)
        via = f"127.0.0.1:{server.address[1]}"
        reader, writer = await client_mesh.open_connection("127.0.0.1:1", via=via, identities=[API])
        writer.write(b"!")
        with pytest.raises(HboneError):
            await asyncio.wait_for(reader.read(), 10)
        reader, writer = await client_mesh.open_connection("127.0.0.1:1", via=via, identities=[API])
        writer.write(b"?")
        assert await asyncio.wait_for(reader.read(), 10) == b"fine"
        writer.close()


async def test_grpc_channel_over_the_mesh(certs: dict[str, Path]) -> None:
    grpc = GrpcServer()
    EchoService().register(grpc)
    host, grpc_port = await grpc.listen()
    async with Mesh(certs["api"]) as server_mesh, Mesh(certs["web"]) as client_mesh:
        hbone_server = HboneServer(server_mesh.tls, InboundHandler(InboundConfig(own_ports=frozenset())))
        _, hbone_port = await hbone_server.listen("127.0.0.1", 0)
        try:
            via = f"127.0.0.1:{hbone_port}"
            channel = client_mesh.grpc_channel(f"{host}:{grpc_port}", via=via, identities=[API])
            async with channel:
                assert await channel.unary(PREFIX + "Unary", b"over hbone", timeout=10) == b"over hbone"
        finally:
            await hbone_server.close()
            await grpc.shutdown(0.2)


async def test_lifecycle_errors_are_one_line(certs: dict[str, Path]) -> None:
    mesh = Mesh(certs["web"])
    with pytest.raises(ConfigError, match="not started"):
        await mesh.open_connection("127.0.0.1:80", via="127.0.0.1:1", identities=[API])
    with pytest.raises(ConfigError, match="needs certificates"):
        await Mesh().start()


def test_import_is_lazy() -> None:
    code = "import hbone, sys; assert 'hbone.mesh.core' not in sys.modules and 'httpx' not in sys.modules; hbone.Mesh"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_runs_on_uvloop(certs: dict[str, Path]) -> None:
    """The same library under uvloop (what the CLIs use): an ASGI app and an httpx HTTP/2 client, one process."""
    uvloop = pytest.importorskip("uvloop")
    import httpx

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            caller = scope["extensions"]["hbone"]["peer_identity"].encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": caller})

    async def scenario() -> tuple[str, bytes]:
        async with Mesh(certs["api"]) as server_mesh, Mesh(certs["web"]) as client_mesh:
            server = await server_mesh.serve_asgi(app, host="127.0.0.1", port=0)
            via = f"127.0.0.1:{server.address[1]}"
            transport = client_mesh.httpx_transport(http1=False, http2=True, via=via, identities=[API])
            async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                r = await client.get("http://127.0.0.1:8080/")
                return type(asyncio.get_running_loop()).__module__, r.content

    loop_module, body = uvloop.run(asyncio.wait_for(scenario(), 30))
    assert loop_module.startswith("uvloop") and body == b"spiffe://cluster.local/ns/shop/sa/web"


async def test_handler_sees_the_original_client_a_proxy_forwarded(certs: dict[str, Path]) -> None:
    """A proxy (here our HboneClient, as an agent or waypoint uses it) names the original client in `forwarded`."""
    from hbone.client import Endpoint, HboneClient

    got: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def handler(reader: TunnelReader, writer: TunnelWriter) -> None:
        got.set_result(writer.peer.forwarded_for)
        writer.write_eof()

    async with Mesh(certs["api"]) as server_mesh, Mesh(certs["web"]) as proxy_mesh:
        server = await server_mesh.serve(handler, host="127.0.0.1", port=0)
        client = HboneClient(proxy_mesh.tls)
        try:
            tunnel = await client.open(
                "127.0.0.1:80", Endpoint("127.0.0.1", server.address[1]), forwarded_for="10.1.2.3:4567"
            )
            assert await asyncio.wait_for(got, 10) == "10.1.2.3:4567"
            tunnel.write_eof()
        finally:
            await client.close()
