"""SO_MARK on HBONE dials (`HboneClient(mark=...)`, the frontends `mark:`), so capture rules skip them by mark."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.commands.frontends_config import FrontendsConfig
from hbone.commands.frontends_runtime import Runtime
from hbone.errors import ConnectionLost
from hbone.testing import TestCA
from tests.integration.test_proxy_mesh import echo_server, hbone_node

pytestmark = pytest.mark.timeout(30)


async def test_hbone_dial_carries_so_mark() -> None:
    ca = TestCA()
    async with echo_server() as eport, hbone_node(ca, "bob", "ns") as node:
        client = HboneClient(ca.mesh_tls("ns", "client"), mark=0x539)
        plain = HboneClient(ca.mesh_tls("ns", "client"))
        try:
            for c, expected in ((client, 0x539), (plain, 0)):
                tunnel = await c.open(f"127.0.0.1:{eport}", Endpoint("127.0.0.1", node.port))
                sock = tunnel.h2.connection.get_extra_info("socket")
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == expected
                tunnel.write(b"marked")
                assert await tunnel.read() == b"marked"
                tunnel.reset()
            with pytest.raises(ConnectionLost, match="cannot connect to HBONE server"):
                await client.open("127.0.0.1:1", Endpoint("127.0.0.1", 1))
        finally:
            await client.close()
            await plain.close()


async def test_frontends_mark_reaches_the_hbone_client(tmp_path: Path) -> None:
    certs = TestCA().write(tmp_path / "c", "ns", "proxy")
    runtime = Runtime(FrontendsConfig.from_dict({"certs": str(certs), "mark": "0x77", "listeners": []}))
    await runtime.start()
    try:
        assert runtime.client is not None and runtime.client.mark == 0x77
    finally:
        await runtime.close()
