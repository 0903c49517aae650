"""Interop with grpcio (C-core) in both directions: grpcio client -> our server, our client -> grpcio server.

Both peers run on loopback in this process's event loop (grpc.aio). Raw bytes through grpcio's generic API (no
serializers), so no generated code is needed. Covered per direction: the four call kinds, ASCII and binary
metadata, expiring deadlines, cancellation, error statuses with messages and details, 16 MiB messages with raised
limits, gzip both ways, and 500 concurrent calls on one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.grpc.server import GrpcServer
from hbone.grpc.testing import PREFIX, EchoService

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
BIG = 16 * MiB
LIMITS = [("grpc.max_receive_message_length", 32 * MiB), ("grpc.max_send_message_length", 32 * MiB)]


# --- grpcio client -> our server ------------------------------------------------------------------------------


@pytest.fixture
async def ours() -> AsyncIterator[tuple[GrpcServer, EchoService, str]]:
    server = GrpcServer(max_receive_message_size=32 * MiB, max_send_message_size=32 * MiB, compression="gzip")
    service = EchoService()
    service.register(server)
    host, port = await server.listen("127.0.0.1", 0)
    try:
        yield server, service, f"{host}:{port}"
    finally:
        await server.shutdown(0.5)


async def test_grpcio_client_four_kinds_and_metadata(ours: Any) -> None:
    _, service, addr = ours
    async with grpc.aio.insecure_channel(addr) as ch:
        unary = ch.unary_unary(PREFIX + "Unary")
        md = (("x-echo-a", "1"), ("x-echo-bin", b"\x00\xff\x01"))
        call = unary(b"hello", metadata=md)
        assert await call == b"hello"
        assert ("x-echo-a", "1") in tuple(await call.initial_metadata())
        trailing = tuple(await call.trailing_metadata())
        assert ("x-echo-bin", b"\x00\xff\x01") in trailing
        assert service.calls[-1].metadata.get("x-echo-bin") == b"\x00\xff\x01"
        assert await call.code() == grpc.StatusCode.OK

        stream = ch.unary_stream(PREFIX + "ServerStream")
        assert [m async for m in stream((3).to_bytes(4, "big") + b"ab")] == [b"ab"] * 3

        async def requests() -> AsyncIterator[bytes]:
            for part in (b"a", b"b", b"c"):
                yield part

        assert await ch.stream_unary(PREFIX + "ClientStream")(requests()) == b"abc"
        bidi = ch.stream_stream(PREFIX + "Bidi")()
        for part in (b"x", b"yy"):
            await bidi.write(part)
            assert await bidi.read() == part
        await bidi.done_writing()
        assert await bidi.read() == grpc.aio.EOF
        assert await bidi.code() == grpc.StatusCode.OK


async def test_grpcio_client_errors_deadline_cancel(ours: Any) -> None:
    _, service, addr = ours
    async with grpc.aio.insecure_channel(addr) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(PREFIX + "Fail")(bytes([GrpcStatus.NOT_FOUND]) + "no such thing: ünïcode %".encode())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "no such thing: ünïcode %"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(PREFIX + "Crash")(b"")
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "internal error"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/no.Such/Method")(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(PREFIX + "Sleep")(b"", timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(service.cancelled.wait(), 5)  # our handler was cancelled by our deadline

        service.started.clear()
        service.cancelled.clear()
        call = ch.unary_unary(PREFIX + "Sleep")(b"")
        await asyncio.wait_for(service.started.wait(), 5)
        call.cancel()
        await asyncio.wait_for(service.cancelled.wait(), 5)  # RST_STREAM from grpcio cancelled the handler
        assert service.cancel_count == 2


async def test_grpcio_client_large_gzip_and_500_concurrent(ours: Any) -> None:
    server, service, addr = ours
    async with grpc.aio.insecure_channel(addr, options=LIMITS, compression=grpc.Compression.Gzip) as ch:
        big = bytes(range(256)) * (BIG // 256)
        assert await ch.unary_unary(PREFIX + "Unary")(big) == big
        assert service.calls[-1].info.encoding == "gzip"  # grpcio compressed it, we inflated it
        assert len(await ch.unary_unary(PREFIX + "Size")(str(BIG).encode())) == BIG

        unary = ch.unary_unary(PREFIX + "Unary")
        replies = await asyncio.gather(*(unary(i.to_bytes(4, "big")) for i in range(500)))
        assert replies == [i.to_bytes(4, "big") for i in range(500)]
    listener = server._listeners[0]
    assert sum(1 for _ in listener.connections) <= 1


async def test_grpcio_client_over_limit_is_resource_exhausted(ours: Any) -> None:
    _, _, addr = ours
    async with grpc.aio.insecure_channel(addr, options=LIMITS) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(PREFIX + "Unary")(bytes(33 * MiB))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await ch.unary_unary(PREFIX + "Unary")(b"still fine") == b"still fine"


# --- our client -> grpcio server ------------------------------------------------------------------------------


class GrpcioService:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.metadata: tuple[Any, ...] = ()
        self.compressed: list[bool] = []

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.metadata = tuple(context.invocation_metadata() or ())
        echo = tuple((k, v) for k, v in self.metadata if k.startswith("x-echo"))
        if request == b"gzip-reply":
            context.set_compression(grpc.Compression.Gzip)
        await context.send_initial_metadata(echo)
        context.set_trailing_metadata(echo)
        return request

    async def size(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return bytes(int(request))

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "go away: ünïcode %")
        raise AssertionError("unreachable")

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""

    async def server_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(int.from_bytes(request[:4], "big")):
            yield request[4:]

    async def client_stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return b"".join([r async for r in requests])

    async def bidi(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r


@pytest.fixture
async def theirs() -> AsyncIterator[tuple[GrpcioService, str]]:
    svc = GrpcioService()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
        "Size": grpc.unary_unary_rpc_method_handler(svc.size),
        "Fail": grpc.unary_unary_rpc_method_handler(svc.fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(svc.sleep),
        "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi),
    }
    server = grpc.aio.server(options=LIMITS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hbone.test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield svc, f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


async def test_our_client_four_kinds_and_metadata(theirs: Any) -> None:
    svc, addr = theirs
    async with Channel(addr, metadata=[("x-static", "s")]) as ch:
        md = [("x-echo-a", "1"), ("x-echo-bin", b"\x00\xff\x01")]
        async with ch.stream(PREFIX + "Unary", metadata=md) as call:
            await call.send_last(b"hello")
            assert await call.recv() == b"hello"
            assert await call.recv() is None
        assert call.initial_metadata is not None and call.initial_metadata.get("x-echo-bin") == b"\x00\xff\x01"
        assert call.trailing_metadata is not None and call.trailing_metadata.get("x-echo-a") == "1"
        assert ("x-static", "s") in svc.metadata
        assert ("x-echo-bin", b"\x00\xff\x01") in svc.metadata

        got = [m async for m in ch.server_stream(PREFIX + "ServerStream", (4).to_bytes(4, "big") + b"z")]
        assert got == [b"z"] * 4
        async with ch.stream(PREFIX + "ClientStream") as call:
            for part in (b"a", b"b", b"c"):
                await call.send(part)
            await call.done_sending()
            assert await call.recv() == b"abc"
            assert await call.recv() is None
        async with ch.stream(PREFIX + "Bidi") as call:
            for part in (b"x", b"yy"):
                await call.send(part)
                assert await call.recv() == part
            await call.done_sending()
            assert await call.recv() is None
            assert call.status is not None and call.status.ok


async def test_our_client_errors_deadline_cancel(theirs: Any) -> None:
    svc, addr = theirs
    async with Channel(addr) as ch:
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Fail", b"")
        assert err.value.status is GrpcStatus.PERMISSION_DENIED
        assert err.value.message == "go away: ünïcode %"
        with pytest.raises(GrpcError) as err:
            await ch.unary("/no.Such/Method", b"")
        assert err.value.status is GrpcStatus.UNIMPLEMENTED

        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Sleep", b"", timeout=0.3)
        assert err.value.status is GrpcStatus.DEADLINE_EXCEEDED
        await asyncio.wait_for(svc.cancelled.wait(), 5)

        svc.started.clear()
        svc.cancelled.clear()
        async with ch.stream(PREFIX + "Sleep") as call:
            await call.send_last(b"")
            await asyncio.wait_for(svc.started.wait(), 5)
            call.cancel()
            with pytest.raises(GrpcError) as err:
                await call.recv()
            assert err.value.status is GrpcStatus.CANCELLED
        await asyncio.wait_for(svc.cancelled.wait(), 5)  # grpcio saw our RST_STREAM(CANCEL)

        # Cancelling the task that awaits a call resets the stream too.
        svc.started.clear()
        svc.cancelled.clear()
        task = asyncio.ensure_future(ch.unary(PREFIX + "Sleep", b""))
        await asyncio.wait_for(svc.started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(svc.cancelled.wait(), 5)
        assert await ch.unary(PREFIX + "Unary", b"after") == b"after"


async def test_our_client_large_gzip_and_500_concurrent(theirs: Any) -> None:
    _, addr = theirs
    async with Channel(addr, max_receive_message_size=32 * MiB, max_send_message_size=32 * MiB) as ch:
        big = bytes(range(256)) * (BIG // 256)
        assert await ch.unary(PREFIX + "Unary", big, compression="gzip") == big
        assert len(await ch.unary(PREFIX + "Size", str(BIG).encode())) == BIG
        async with ch.stream(PREFIX + "Unary") as call:
            await call.send_last(b"gzip-reply")
            assert await call.recv() == b"gzip-reply"
            assert call.response_encoding == "gzip"
            assert await call.recv() is None

        conn = ch._conn
        replies = await asyncio.gather(*(ch.unary(PREFIX + "Unary", i.to_bytes(4, "big")) for i in range(500)))
        assert replies == [i.to_bytes(4, "big") for i in range(500)]
        assert ch._conn is conn and not ch._old  # all 500 on the one connection


async def test_our_client_limit_is_resource_exhausted(theirs: Any) -> None:
    _, addr = theirs
    async with Channel(addr, max_receive_message_size=1024) as ch:
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Size", b"2048")
        assert err.value.status is GrpcStatus.RESOURCE_EXHAUSTED
        with pytest.raises(GrpcError) as err:
            await ch.unary(PREFIX + "Unary", bytes(5 * MiB))  # over our 4 MiB send limit: never sent
        assert err.value.status is GrpcStatus.RESOURCE_EXHAUSTED
        assert await ch.unary(PREFIX + "Unary", b"ok") == b"ok"
