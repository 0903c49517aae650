"""Closed connections free their memory by reference counting alone: no reference cycle may keep an HBONE tunnel's
or a gRPC call's connection (and its buffers) alive until the cycle collector happens to run."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from hbone.grpc.client import Channel
from hbone.grpc.codec import RawCodec
from hbone.grpc.server import GrpcServer, ServerCall
from hbone.net.connection import H2Connection
from hbone.net.endpoints import connect
from hbone.net.settings import H2Settings
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import start_echo_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def gone(refs: list[weakref.ref[H2Connection]]) -> bool:
    """Whether every referenced connection was freed, waiting (bounded) for close callbacks to run."""
    for _ in range(200):
        if all(r() is None for r in refs):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_closed_tunnel_and_grpc_connections_are_freed_without_gc(no_cycle_collector: None) -> None:
    echo, echo_port = await start_echo_server()
    grpc = GrpcServer()

    async def echo_unary(request: bytes, call: ServerCall) -> bytes:
        return request

    # Not hbone.grpc.testing.EchoService: it keeps every call (and so its connection) for assertions.
    grpc.add_unary("/t.Echo/Unary", echo_unary, RawCodec(), RawCodec())
    server = HboneServer(None, InboundHandler(InboundConfig()), grpc=grpc)
    _, port = await server.listen("127.0.0.1", 0, plaintext=True)
    refs: list[weakref.ref[H2Connection]] = []
    try:
        for _ in range(3):
            conn = await connect("127.0.0.1", port, settings=H2Settings.client(ping_interval=None))
            stream = await conn.open_stream([(":method", "CONNECT"), (":authority", f"127.0.0.1:{echo_port}")])
            await stream.response_headers()
            await stream.send(b"ping")
            stream.write_eof()
            assert await stream.read() == b"ping"
            while await stream.read():
                pass
            refs += [weakref.ref(conn), *(weakref.ref(c) for c in server.connections)]
            del stream
            await conn.close()
            del conn
        async with Channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary("/t.Echo/Unary", b"hello") == b"hello"
            refs += [weakref.ref(c) for c in server.connections]
        assert await gone(refs), [r() for r in refs]
    finally:
        await server.close()
        echo.close()
