"""Our gRPC client and server on loopback: mTLS identities, one listener for HBONE and gRPC, calls through a
CONNECT tunnel, health, graceful shutdown, deadlines and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec, RawCodec
from hbone.grpc.health import CHECK, WATCH, ServingStatus, health_messages
from hbone.grpc.server import GrpcServer, ServerCall
from hbone.grpc.testing import PREFIX, EchoService
from hbone.identity import IdentityManager
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server
from hbone.tls import MeshTls

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def mesh(ca: TestCA, sa: str) -> MeshTls:
    return MeshTls(IdentityManager.fixed(ca.issue("ns", sa)))


@pytest.fixture
async def h2c() -> AsyncIterator[tuple[GrpcServer, EchoService, str]]:
    server = GrpcServer()
    service = EchoService()
    service.register(server)
    host, port = await server.listen()
    try:
        yield server, service, f"{host}:{port}"
    finally:
        await server.shutdown(0.2)


async def test_four_kinds_metadata_and_codecs(h2c: Any) -> None:
    _, service, addr = h2c
    async with Channel(addr) as ch:
        assert await ch.unary(PREFIX + "Unary", b"hi", metadata=[("x-echo-k", "v")]) == b"hi"
        assert service.calls[-1].metadata.get("x-echo-k") == "v"
        replies = [r async for r in ch.server_stream(PREFIX + "ServerStream", (2).to_bytes(4, "big") + b"q")]
        assert replies == [b"q", b"q"]
        async with ch.stream(PREFIX + "ClientStream") as call:
            await call.send(b"1")
            await call.send(b"2")
            await call.done_sending()
            assert await call.recv() == b"12"
            assert await call.recv() is None
        async with ch.stream(PREFIX + "Bidi", timeout=10) as call:
            await call.send(b"ping")
            assert await call.recv() == b"ping"
            await call.done_sending()
            assert await call.recv() is None
        # Codec per call: the same server method read as protobuf messages.
        request, response = health_messages()
        reply = await ch.unary(
            CHECK, request(service=""), request_codec=ProtoCodec(request), response_codec=ProtoCodec(response)
        )
        assert reply.status == ServingStatus.SERVING


async def test_errors_do_not_leak_and_unknown_methods(h2c: Any) -> None:
    _, _, addr = h2c
    async with Channel(addr) as ch:
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Crash", b"")
        assert (err.value.status, err.value.message) == (GrpcStatus.INTERNAL, "internal error")
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Fail", bytes([GrpcStatus.ABORTED]) + b"100% bad\n")
        assert (err.value.status, err.value.message, err.value.details) == (
            GrpcStatus.ABORTED,
            "100% bad\n",
            b"details",
        )
        with pytest.raises(GrpcError) as err:
            await ch.unary("/pkg.Svc/Nope", b"")
        assert err.value.status is GrpcStatus.UNIMPLEMENTED


async def test_deadline_and_cancel_reach_the_handler(h2c: Any) -> None:
    _, service, addr = h2c
    async with Channel(addr) as ch:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Sleep", b"", timeout=0.2)
        assert err.value.status is GrpcStatus.DEADLINE_EXCEEDED
        assert loop.time() - start < 2
        await asyncio.wait_for(service.cancelled.wait(), 5)
        assert service.calls[-1].deadline is not None

        service.started.clear()
        service.cancelled.clear()
        async with ch.stream(PREFIX + "Sleep") as call:
            await call.send_last(b"")
            await asyncio.wait_for(service.started.wait(), 5)
            call.cancel()
        await asyncio.wait_for(service.cancelled.wait(), 5)
        assert await ch.unary(PREFIX + "Unary", b"next") == b"next"


async def test_mtls_handler_sees_caller_identity(ca: TestCA) -> None:
    server_tls, client_tls = mesh(ca, "server"), mesh(ca, "client")
    grpc = GrpcServer()
    EchoService().register(grpc)
    host, port = await grpc.listen(tls=server_tls)
    server_id = str(server_tls.manager.identity)
    try:
        async with Channel(f"{host}:{port}", tls=client_tls, expected_identities=[server_id]) as ch:
            assert await ch.unary(PREFIX + "WhoAmI", b"") == str(client_tls.manager.identity).encode()
        async with Channel(f"{host}:{port}", tls=client_tls, expected_identities=["spiffe://x/ns/a/sa/b"]) as ch:
            with pytest.raises(GrpcError) as err:
                await ch.unary(PREFIX + "WhoAmI", b"")
            assert err.value.status is GrpcStatus.UNAUTHENTICATED
    finally:
        await grpc.shutdown(0.2)


async def test_one_listener_serves_tunnels_and_grpc_and_grpc_through_a_tunnel(ca: TestCA) -> None:
    server_tls, client_tls = mesh(ca, "server"), mesh(ca, "client")
    # A plain h2c gRPC server that the HBONE node forwards tunnels to.
    backend = GrpcServer()
    EchoService().register(backend)
    _, backend_port = await backend.listen()
    # The HBONE node: tunnels and gRPC on the same mTLS port.
    node_grpc = GrpcServer()
    EchoService().register(node_grpc)
    node = HboneServer(server_tls, InboundHandler(InboundConfig()), grpc=node_grpc)
    _, node_port = await node.listen("127.0.0.1", 0)
    echo, echo_port = await start_echo_server()
    hbone = HboneClient(client_tls)
    endpoint = Endpoint("127.0.0.1", node_port, identities=(str(server_tls.manager.identity),))
    try:
        tunnel = await hbone.open(f"127.0.0.1:{echo_port}", endpoint)
        tunnel.write(b"tcp bytes")
        assert await asyncio.wait_for(tunnel.read(), 5) == b"tcp bytes"
        tunnel.write_eof()

        async with Channel(f"127.0.0.1:{node_port}", tls=client_tls, expected_identities=endpoint.identities) as ch:
            assert await ch.unary(PREFIX + "WhoAmI", b"") == str(client_tls.manager.identity).encode()

        async def open_tunnel() -> Any:
            return await hbone.open(f"127.0.0.1:{backend_port}", endpoint)

        async with Channel(f"127.0.0.1:{backend_port}", tunnel=open_tunnel) as ch:
            assert await ch.unary(PREFIX + "Unary", b"through the tunnel") == b"through the tunnel"
            big = bytes(3 * 1024 * 1024)
            assert await ch.unary(PREFIX + "Unary", big) == big
            got = [r async for r in ch.server_stream(PREFIX + "ServerStream", (50).to_bytes(4, "big") + b"m" * 1000)]
            assert len(got) == 50
            replies = await asyncio.gather(*(ch.unary(PREFIX + "Unary", bytes([i])) for i in range(100)))
            assert replies == [bytes([i]) for i in range(100)]
    finally:
        await hbone.close()
        await node.close()
        echo.close()
        await backend.shutdown(0.2)


async def test_health_watch_and_graceful_shutdown() -> None:
    grpc = GrpcServer()
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(request: bytes, call: ServerCall) -> bytes:
        started.set()
        await release.wait()
        return b"finished"

    raw = RawCodec()
    grpc.add_unary("/t.S/Slow", slow, raw, raw)
    grpc.health.set_status("t.S", ServingStatus.SERVING)
    host, port = await grpc.listen()
    request, response = health_messages()
    codecs: dict[str, Any] = {"request_codec": ProtoCodec(request), "response_codec": ProtoCodec(response)}
    async with Channel(f"{host}:{port}") as ch:
        with pytest.raises(GrpcError) as err:
            await ch.unary(CHECK, request(service="other"), **codecs)
        assert err.value.status is GrpcStatus.NOT_FOUND
        watch = ch.server_stream(WATCH, request(service="t.S"), **codecs)
        assert (await anext(watch)).status == ServingStatus.SERVING
        running = asyncio.ensure_future(ch.unary("/t.S/Slow", b""))
        await asyncio.wait_for(started.wait(), 5)

        shutdown = asyncio.ensure_future(grpc.shutdown(grace=1.0))
        assert (await asyncio.wait_for(anext(watch), 5)).status == ServingStatus.NOT_SERVING
        with pytest.raises(GrpcError) as err:  # GOAWAY'd connection; the listener is closed: nowhere to go
            await ch.unary(CHECK, request(service=""), **codecs)
        assert err.value.status is GrpcStatus.UNAVAILABLE
        release.set()
        assert await asyncio.wait_for(running, 5) == b"finished"  # the running call finished
        with pytest.raises(GrpcError) as err:  # the watch outlived the grace period: cancelled
            await asyncio.wait_for(anext(watch), 5)
        assert err.value.status is GrpcStatus.UNAVAILABLE
        await asyncio.wait_for(shutdown, 5)
