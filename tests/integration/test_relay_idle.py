"""The idle timeout end to end, on loopback with a tiny timeout: a SOCKS5 front end (`Dialer(idle_timeout=)`)
and an HBONE inbound (`InboundConfig.idle_timeout`) close an established tunnel that moves no byte, reset the
other side, and their access records say why. Waits are on events with generous bounds, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.errors import StreamReset
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Dialer
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.socks5 import Socks5Proxy
from hbone.server import HboneServer
from hbone.testing import TestCA
from hbone.wire import socks5 as s5
from tests.integration.test_proxy_mesh import IO, echo_server, hbone_node, serving, socks_connect, via_table

pytestmark = pytest.mark.timeout(60)
IDLE = 0.2


class Closed:
    """Access records as they finish."""

    def __init__(self) -> None:
        self.records: asyncio.Queue[AccessRecord] = asyncio.Queue()

    def opened(self, record: AccessRecord) -> None:
        pass

    def closed(self, record: AccessRecord) -> None:
        self.records.put_nowait(record)

    async def where(self, direction: str) -> AccessRecord:
        while (record := await asyncio.wait_for(self.records.get(), IO)).direction != direction:
            pass
        return record


@pytest.fixture
async def closed() -> AsyncIterator[Closed]:
    sink = Closed()
    remove = accesslog.add_sink(sink)
    try:
        yield sink
    finally:
        remove()


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


async def test_socks5_tunnel_idle_for_the_timeout_is_closed(ca: TestCA, closed: Closed) -> None:
    async with hbone_node(ca) as node, echo_server() as eport:
        client = HboneClient(ca.mesh_tls("ns", "client"))
        proxy = Socks5Proxy(Dialer(client, via_table(node), idle_timeout=IDLE))
        async with serving(lambda: proxy.start("127.0.0.1", 0)) as port:
            reply, reader, writer = await socks_connect(port, "127.0.0.1", eport)
            assert reply.code == s5.ReplyCode.SUCCEEDED
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), IO) == b"ping"
            # Now silence both ways: the front end ends the relay, closing our connection.
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), IO) == b""
            record = await closed.where("socks5")
            assert "idle timeout" in record.result and (record.bytes_sent, record.bytes_received) == (4, 4)
            writer.close()
        await client.close()


async def test_hbone_inbound_resets_an_idle_tunnel(ca: TestCA, closed: Closed) -> None:
    async with echo_server() as eport:
        tls = ca.mesh_tls("ns", "bob")
        inbound = InboundHandler(InboundConfig(tls=tls, own_ports=frozenset(), idle_timeout=IDLE))
        server = HboneServer(tls, inbound)
        _, port = await server.listen("127.0.0.1", 0)
        client = HboneClient(ca.mesh_tls("ns", "client"))
        try:
            tunnel = await client.open(f"127.0.0.1:{eport}", Endpoint("127.0.0.1", port, (str(tls.manager.identity),)))
            tunnel.write(b"hello")
            assert await asyncio.wait_for(tunnel.stream.read(), IO) == b"hello"
            with pytest.raises(StreamReset):  # RST_STREAM(CANCEL) once the tunnel sat idle
                await asyncio.wait_for(tunnel.stream.read(), IO)
            record = await closed.where("inbound")
            assert "idle timeout" in record.result
        finally:
            await client.close()
            await server.close()
