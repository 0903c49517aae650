"""gRPC client and server over in-memory byte pipes (no sockets): `ByteStreamTransport` carries both HTTP/2 ends.

Also the small sans-IO helpers: h2 error -> status mapping, outgoing framing, the message reader, health state.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hbone.errors import ConnectionLost, GrpcError, GrpcStatus, H2ErrorCode, LimitExceeded, ProtocolError, StreamReset
from hbone.grpc.call import MessageReader, frame
from hbone.grpc.client import Channel
from hbone.grpc.framing import MessageDecoder, encode_message
from hbone.grpc.health import HealthServicer, ServingStatus, health_messages
from hbone.grpc.server import GrpcServer
from hbone.grpc.status import status_from_exception, status_from_h2_error
from hbone.grpc.testing import PREFIX, EchoService
from hbone.grpc.transport import ByteStreamTransport
from hbone.net.connection import H2Connection
from hbone.net.stream import Stream
from hbone.server import PeerInfo

pytestmark = pytest.mark.timeout(20)


class Pipe:
    """One direction of an in-memory byte stream, with half-close."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def push(self, data: bytes) -> None:
        self.chunks.append(data)
        self._wake()

    def close(self) -> None:
        self.eof = True
        self._wake()

    async def pull(self) -> bytes:
        while not self.chunks:
            if self.eof:
                return b""
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.chunks.popleft()


class End:
    """One end of a duplex in-memory connection (the `ByteStream` shape)."""

    def __init__(self, inbound: Pipe, outbound: Pipe) -> None:
        self.inbound, self.outbound = inbound, outbound
        self.buffered = 0

    async def read(self, n: int = -1) -> bytes:
        return await self.inbound.pull()

    def write(self, data: bytes) -> None:
        self.outbound.push(bytes(data))

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        self.outbound.close()


def duplex() -> tuple[End, End]:
    a, b = Pipe(), Pipe()
    return End(a, b), End(b, a)


@pytest.fixture
async def channel() -> AsyncIterator[tuple[Channel, EchoService]]:
    server = GrpcServer()
    service = EchoService()
    service.register(server)
    peer = PeerInfo(None, None, None, tls=False)

    async def handler(stream: Stream) -> None:
        await server(stream, peer)

    conns: list[H2Connection] = []

    async def tunnel() -> End:
        client_end, server_end = duplex()
        conn = H2Connection(client=False, handler=handler)
        ByteStreamTransport(server_end, conn).start()
        conns.append(conn)
        return client_end

    ch = Channel("memory:1", tunnel=tunnel)
    try:
        yield ch, service
    finally:
        await ch.close()
        for conn in conns:
            conn.abort()


async def test_calls_over_in_memory_pipes(channel: Any) -> None:
    ch, service = channel
    assert await ch.unary(PREFIX + "Unary", b"mem") == b"mem"
    assert [m async for m in ch.server_stream(PREFIX + "ServerStream", (3).to_bytes(4, "big") + b"s")] == [b"s"] * 3
    async with ch.stream(PREFIX + "Bidi") as call:
        for i in range(20):
            await call.send(bytes([i]) * 1000)
            assert await call.recv() == bytes([i]) * 1000
        await call.done_sending()
        assert await call.recv() is None
    with pytest.raises(GrpcError) as err:
        await ch.unary(PREFIX + "Sleep", b"", timeout=0.05)
    assert err.value.status is GrpcStatus.DEADLINE_EXCEEDED
    await asyncio.wait_for(service.cancelled.wait(), 5)
    big = bytes(range(256)) * 8192  # 2 MiB: several windows' worth through the pipe
    assert await ch.unary(PREFIX + "Unary", big) == big


async def test_call_after_cancelled_task_and_status_fields(channel: Any) -> None:
    ch, service = channel
    task = asyncio.ensure_future(ch.unary(PREFIX + "Sleep", b""))
    await asyncio.wait_for(service.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(service.cancelled.wait(), 5)
    async with ch.stream(PREFIX + "Fail") as call:
        await call.send_last(bytes([GrpcStatus.OUT_OF_RANGE]) + b"too far")
        with pytest.raises(GrpcError) as err:
            await call.recv()
    assert call.status is not None and call.status.code is GrpcStatus.OUT_OF_RANGE
    assert err.value.details == b"details"
    with pytest.raises(GrpcError):  # the outcome sticks
        await call.recv()


# --- sans-IO helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (H2ErrorCode.CANCEL, GrpcStatus.CANCELLED),
        (H2ErrorCode.REFUSED_STREAM, GrpcStatus.UNAVAILABLE),
        (H2ErrorCode.ENHANCE_YOUR_CALM, GrpcStatus.RESOURCE_EXHAUSTED),
        (H2ErrorCode.INADEQUATE_SECURITY, GrpcStatus.PERMISSION_DENIED),
        (H2ErrorCode.PROTOCOL_ERROR, GrpcStatus.INTERNAL),
        (H2ErrorCode.NO_ERROR, GrpcStatus.INTERNAL),
        (0x77, GrpcStatus.INTERNAL),
    ],
)
def test_h2_error_mapping(code: int, status: GrpcStatus) -> None:
    assert status_from_h2_error(code).code is status


def test_status_from_exception_covers_resets_losses_limits_and_foreign_errors() -> None:
    assert status_from_exception(LimitExceeded("big")).code is GrpcStatus.RESOURCE_EXHAUSTED
    assert status_from_exception(ProtocolError("bad")).code is GrpcStatus.INTERNAL
    assert status_from_exception(ValueError("x")).code is GrpcStatus.UNKNOWN
    assert status_from_exception(StreamReset(H2ErrorCode.CANCEL)).code is GrpcStatus.CANCELLED
    assert status_from_exception(StreamReset(H2ErrorCode.REFUSED_STREAM)).code is GrpcStatus.UNAVAILABLE
    assert status_from_exception(ConnectionLost("gone")).code is GrpcStatus.UNAVAILABLE
    assert status_from_exception(GrpcError(GrpcStatus.NOT_FOUND, "nope")).code is GrpcStatus.NOT_FOUND


def test_frame_limits_compression_and_join() -> None:
    assert frame(b"abc", 10, None) == [encode_message(b"abc")]
    with pytest.raises(GrpcError) as err:
        frame(b"x" * 11, 10, None)
    assert err.value.status is GrpcStatus.RESOURCE_EXHAUSTED
    big = b"y" * 100_000
    prefix, body = frame(big, 1 << 20, None)  # large bodies are not copied behind their prefix
    assert body is big and prefix == encode_message(b"")[:1] + (100_000).to_bytes(4, "big")
    (gz,) = frame(big, 1 << 20, "gzip")
    assert gz[0] == 1 and MessageDecoder(1 << 20, "gzip").feed(gz) == [big]


class Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self, n: int = -1) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


async def test_message_reader_split_packed_and_truncated() -> None:
    wire = encode_message(b"one") + encode_message(b"two") + encode_message(b"three")
    reader = MessageReader(Chunks(wire[:2], wire[2:9], wire[9:]), 100, None)
    assert [await reader.read() for _ in range(4)] == [b"one", b"two", b"three", None]
    truncated = MessageReader(Chunks(encode_message(b"abcdef")[:-1]), 100, None)
    with pytest.raises(ProtocolError):
        await truncated.read()


async def test_health_servicer_check_and_watch() -> None:
    request, _ = health_messages()
    health = HealthServicer()
    call: Any = None
    assert (await health.check(request(service=""), call)).status == ServingStatus.SERVING
    with pytest.raises(GrpcError) as err:
        await health.check(request(service="svc"), call)
    assert err.value.status is GrpcStatus.NOT_FOUND
    watch = health.watch(request(service="svc"), call)
    assert (await anext(watch)).status == ServingStatus.SERVICE_UNKNOWN
    nxt = asyncio.ensure_future(anext(watch))
    health.set_status("svc", ServingStatus.SERVING)
    assert (await asyncio.wait_for(nxt, 5)).status == ServingStatus.SERVING
    nxt = asyncio.ensure_future(anext(watch))
    health.enter_graceful_shutdown()
    assert (await asyncio.wait_for(nxt, 5)).status == ServingStatus.NOT_SERVING
    health.set_status("svc", ServingStatus.SERVING)  # frozen while draining
    assert health.status("svc") is ServingStatus.NOT_SERVING
    await watch.aclose()


def test_health_messages_are_wire_compatible() -> None:
    request, response = health_messages()
    assert request(service="a.B").SerializeToString() == b"\n\x03a.B"
    assert response.FromString(b"\x08\x02").status == ServingStatus.NOT_SERVING
    assert health_messages() is health_messages()


def test_server_rejects_bad_paths() -> None:
    server = GrpcServer(health=False, reflection=False)
    with pytest.raises(ValueError):
        server.add_unary("no-slash", lambda r, c: r, None, None)  # type: ignore[arg-type]
    assert server.methods == ()
    assert "/grpc.health.v1.Health/Check" in GrpcServer().methods
