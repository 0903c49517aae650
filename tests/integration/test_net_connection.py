"""hbone.net over real loopback sockets (h2c): echo, bulk flow control, half-close, limits, resets, keepalive,
GOAWAY drain, protocol errors, trailers. Every test is bounded by pytest-timeout and asyncio.wait_for."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import pytest

from hbone.errors import ConnectionLost, H2ErrorCode, LimitExceeded, StreamReset
from hbone.net.connection import H2Connection
from hbone.net.endpoints import connect, serve
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream

pytestmark = pytest.mark.timeout(60)

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:8080")]
Handler = Callable[[Stream], Awaitable[None]]


@contextlib.asynccontextmanager
async def h2_server(
    handler: Handler, settings: H2Settings | None = None, **kw: object
) -> AsyncIterator[tuple[int, set[H2Connection]]]:
    registry: set[H2Connection] = set()
    server = await serve(handler, "127.0.0.1", 0, settings=settings, registry=registry, **kw)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, registry
    finally:
        server.close()
        for conn in list(registry):
            conn.abort()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def h2_client(port: int, settings: H2Settings | None = None) -> AsyncIterator[H2Connection]:
    conn = await connect("127.0.0.1", port, settings=settings)
    try:
        yield conn
    finally:
        await conn.close()


async def echo(stream: Stream) -> None:
    stream.send_headers([(":status", "200")])
    while data := await stream.read(65536):
        await stream.send(data)
    stream.write_eof()


async def read_all(stream: Stream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition (bounded); used only where the driver exposes no event to await."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def run(coro: Awaitable[object], timeout: float = 30.0) -> Awaitable[object]:
    return asyncio.wait_for(coro, timeout)


async def test_connect_echo_round_trip() -> None:
    async with h2_server(echo) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)
        assert (b":status", b"200") in await run(stream.response_headers())
        await stream.send(b"hello")
        assert await run(stream.readexactly(5)) == b"hello"
        stream.write_eof()
        assert await run(stream.read()) == b""
        await run(stream.wait_closed())
        assert stream.error is None
        assert (stream.bytes_in, stream.bytes_out) == (5, 5)
        assert conn.active_streams == 0


async def test_64mib_each_way_flow_control() -> None:
    block = os.urandom(1 << 20)
    count = 64
    expected = hashlib.sha256(block * count).hexdigest()
    async with h2_server(echo) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)

        async def writer() -> None:
            for _ in range(count):
                await stream.send(block)
                # the send queue stays bounded whatever the reader does
                assert stream.buffered <= conn.settings.max_send_buffer + len(block)
            stream.write_eof()

        task = asyncio.create_task(writer())
        digest = hashlib.sha256()
        total = 0
        while data := await run(stream.read()):
            digest.update(data)
            total += len(data)
        await run(task)
        assert total == len(block) * count
        assert digest.hexdigest() == expected


async def test_slow_reader_bounds_peer_to_window() -> None:
    """The server writes 32 MiB; the client reads nothing. Only one stream window may arrive unread."""
    started = asyncio.Event()
    server_stream: list[Stream] = []

    async def flood(stream: Stream) -> None:
        server_stream.append(stream)
        stream.send_headers([(":status", "200")])
        started.set()
        for _ in range(32):
            await stream.send(b"x" * (1 << 20))
        stream.write_eof()

    settings = H2Settings.client(initial_stream_window=256 * 1024)
    async with h2_server(flood) as (port, _), h2_client(port, settings) as conn:
        stream = await conn.open_stream(CONNECT)
        await run(started.wait())
        # Wait until the server is blocked: its send queue is full and no window is left for it.
        ss = server_stream[0]
        await wait_until(lambda: ss.buffered > ss.connection.settings.max_send_buffer)
        assert stream._recv_len <= 256 * 1024
        assert ss.outbox.waiters  # the server's writer is parked in drain(), not spinning
        total = len(await run(read_all(stream)))
        assert total == 32 << 20


async def test_half_close_client_first() -> None:
    async def reply_after_eof(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        request = await read_all(stream)
        await stream.send(b"got:" + request)
        stream.write_eof()

    async with h2_server(reply_after_eof) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)
        await stream.send(b"question")
        stream.write_eof()  # our side closed; the response must still arrive
        assert await run(read_all(stream)) == b"got:question"
        await run(stream.wait_closed())
        assert stream.error is None


async def test_half_close_server_first_and_server_speaks_first() -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def banner_then_listen(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        await stream.send(b"220 banner\r\n")  # server-first protocol: write before reading anything
        stream.write_eof()  # and half-close its side while the client keeps talking
        got.append(await read_all(stream))
        done.set()

    async with h2_server(banner_then_listen) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)
        assert await run(read_all(stream)) == b"220 banner\r\n"
        await stream.send(b"still talking")  # our direction is still open
        stream.write_eof()
        await run(done.wait())
        assert got == [b"still talking"]
        await run(stream.wait_closed())


async def test_1000_concurrent_streams_one_connection() -> None:
    server_settings = H2Settings.server(max_concurrent_streams=1000)
    client_settings = H2Settings.client(initial_max_send_streams=1000)
    async with h2_server(echo, server_settings) as (port, _), h2_client(port, client_settings) as conn:

        async def one(i: int) -> bool:
            payload = f"stream-{i}-".encode() * (i % 50 + 1)
            stream = await conn.open_stream(CONNECT)
            await stream.send(payload)
            stream.write_eof()
            return await read_all(stream) == payload

        results = await run(asyncio.gather(*(one(i) for i in range(1000))), 60)
        assert all(results)
        assert conn.active_streams == 0


async def test_peer_max_concurrent_streams_respected() -> None:
    concurrent = 0
    peak = 0
    release = asyncio.Event()

    async def hold(stream: Stream) -> None:
        nonlocal concurrent, peak
        concurrent += 1
        peak = max(peak, concurrent)
        stream.send_headers([(":status", "200")])
        await release.wait()
        concurrent -= 1
        stream.write_eof()

    async with h2_server(hold, H2Settings.server(max_concurrent_streams=2)) as (port, _), h2_client(port) as conn:
        first = await conn.open_stream(CONNECT, end_stream=True)
        await run(first.response_headers())  # the server's SETTINGS arrived before this response
        assert conn.peer_max_concurrent_streams == 2
        second = await conn.open_stream(CONNECT, end_stream=True)
        assert conn.available_streams == 0
        with pytest.raises(LimitExceeded):
            await conn.open_stream(CONNECT, wait=False)
        third_task = asyncio.create_task(conn.open_stream(CONNECT, end_stream=True))
        await asyncio.sleep(0.05)
        assert not third_task.done()  # waiting for a slot, not busy-looping or failing
        release.set()
        third = await run(third_task)
        for s in (first, second, third):
            assert await run(read_all(s)) == b""
        assert peak <= 2


async def test_reset_by_client_surfaces_on_server() -> None:
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        try:
            await stream.read()
            await stream.read()
        except StreamReset as exc:
            seen.set_result(exc)

    async with h2_server(reader) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)
        await run(stream.response_headers())
        stream.reset(H2ErrorCode.CANCEL)
        exc = await run(seen)
        assert isinstance(exc, StreamReset) and exc.code == H2ErrorCode.CANCEL
        with pytest.raises(StreamReset):
            stream.write(b"x")
        # the connection is unharmed
        again = await conn.open_stream(CONNECT, end_stream=True)
        assert (b":status", b"200") in await run(again.response_headers())


async def test_reset_by_server_surfaces_on_client() -> None:
    async def refuse(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        await stream.send(b"partial")
        stream.reset(H2ErrorCode.CONNECT_ERROR)

    async with h2_server(refuse) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT)
        with pytest.raises(StreamReset) as info:
            while await run(stream.read()):
                pass
        assert info.value.code == H2ErrorCode.CONNECT_ERROR
        with pytest.raises(StreamReset):
            await stream.send(b"more")


async def test_handler_exception_resets_stream_and_is_retrieved() -> None:
    async def broken(stream: Stream) -> None:
        raise RuntimeError("boom")

    async with h2_server(broken) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(CONNECT, end_stream=True)
        with pytest.raises(StreamReset) as info:
            await run(stream.response_headers())
        assert info.value.code == H2ErrorCode.INTERNAL_ERROR


async def test_keepalive_drops_silent_peer() -> None:
    async def idle(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        await stream.read()

    client_settings = H2Settings.client(ping_interval=0.05, ping_timeout=0.2)
    async with h2_server(idle, H2Settings.server(ping_interval=None)) as (port, registry):
        conn = await connect("127.0.0.1", port, settings=client_settings)
        stream = await conn.open_stream(CONNECT)
        await run(stream.response_headers())
        # a healthy peer answers pings: the connection survives several intervals
        await wait_until(lambda: conn._lifecycle.ping_seq >= 4)
        assert conn.is_usable
        (server_conn,) = registry
        assert server_conn.transport is not None
        server_conn.transport.pause_reading()  # the peer stops reading: no more PING ACKs
        with pytest.raises(ConnectionLost, match="keepalive"):
            await run(stream.read(), 5)
        await run(conn.wait_closed(), 5)
        assert conn.closed and not conn.is_usable
        with pytest.raises(ConnectionLost):
            await conn.open_stream(CONNECT)


async def test_goaway_drain_lets_running_streams_finish() -> None:
    async with h2_server(echo) as (port, registry), h2_client(port) as conn:
        running = await conn.open_stream(CONNECT)
        await running.send(b"before")
        assert await run(running.readexactly(6)) == b"before"
        (server_conn,) = registry
        drain = asyncio.create_task(server_conn.drain(10))
        # The GOAWAY precedes this echo on the wire, so the client has seen it once the echo arrives.
        await running.send(b"during")
        assert await run(running.readexactly(6)) == b"during"
        assert conn.goaway_received == (0, running.stream_id)
        assert not conn.is_usable and conn.available_streams == 0
        with pytest.raises(ConnectionLost):
            await conn.open_stream(CONNECT)
        assert not drain.done()  # still waiting for the running stream
        running.write_eof()
        assert await run(read_all(running)) == b""
        await run(drain)
        assert running.error is None
        await run(conn.wait_closed())


async def test_goaway_drain_deadline_resets_stragglers() -> None:
    async with h2_server(echo) as (port, registry), h2_client(port) as conn:
        stuck = await conn.open_stream(CONNECT)
        await run(stuck.response_headers())
        (server_conn,) = registry
        await run(server_conn.drain(0.1))
        with pytest.raises((StreamReset, ConnectionLost)):
            await run(stuck.read())


async def test_stream_above_goaway_last_id_is_retryable() -> None:
    """A raw peer answers a stream with GOAWAY(last_stream_id=0): the stream fails as retryable."""
    server = await asyncio.start_server(_goaway_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with h2_client(port) as conn:
            stream = await conn.open_stream(CONNECT)
            with pytest.raises(StreamReset) as info:
                await run(stream.response_headers())
            assert getattr(info.value, "retryable", False)
            assert not conn.is_usable
    finally:
        server.close()
        await server.wait_closed()


async def _goaway_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    peer.initiate_connection()
    writer.write(peer.data_to_send())
    try:
        while data := await reader.read(65536):
            for event in peer.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    peer.close_connection(last_stream_id=0)
            writer.write(peer.data_to_send())
    except (h2.exceptions.ProtocolError, ConnectionError):
        pass
    writer.close()


async def test_outbound_header_list_over_peer_limit_rejected_locally() -> None:
    async with h2_server(echo, H2Settings.server(max_header_list_size=1024)) as (port, _), h2_client(port) as conn:
        warm = await conn.open_stream(CONNECT, end_stream=True)
        await run(warm.response_headers())  # server SETTINGS seen
        with pytest.raises(LimitExceeded):
            await conn.open_stream([*CONNECT, ("x-big", "a" * 4000)])
        assert conn.is_usable  # only that request failed


async def test_inbound_header_list_too_large_gets_431() -> None:
    """A peer that ignores our SETTINGS_MAX_HEADER_LIST_SIZE gets 431 on that stream; the connection lives."""
    async with h2_server(echo, H2Settings.server(max_header_list_size=1024)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        peer.initiate_connection()
        peer.send_headers(1, [*CONNECT, ("x-big", "a" * 1500)], end_stream=True)
        peer.send_headers(3, CONNECT, end_stream=False)
        writer.write(peer.data_to_send())
        statuses: dict[int, bytes] = {}
        while len(statuses) < 2:
            data = await run(reader.read(65536))
            assert data
            for event in peer.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
            writer.write(peer.data_to_send())
        assert statuses == {1: b"431", 3: b"200"}
        writer.close()


async def test_garbage_preface_closes_only_that_connection() -> None:
    async with h2_server(echo) as (port, _), h2_client(port) as good:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
        received = b""
        while data := await run(reader.read(65536)):  # the server closes: EOF (after at most a GOAWAY)
            received += data
        writer.close()
        assert _goaway_code(received) == H2ErrorCode.PROTOCOL_ERROR
        stream = await good.open_stream(CONNECT)
        await stream.send(b"still fine")
        stream.write_eof()
        assert await run(read_all(stream)) == b"still fine"


async def test_grossly_oversized_header_list_is_a_connection_error() -> None:
    async with h2_server(echo, H2Settings.server(max_header_list_size=1024)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        peer.initiate_connection()
        writer.write(peer.data_to_send())
        # wait for the server's SETTINGS and ACK them, so its limit is in force
        received = await run(reader.read(65536))
        peer.receive_data(received)
        writer.write(peer.data_to_send())
        peer.send_headers(1, [*CONNECT, ("x-big", "a" * 8000)], end_stream=True)
        writer.write(peer.data_to_send())
        received = b""
        while data := await run(reader.read(65536)):
            received += data
        writer.close()
        assert _goaway_code(received) == H2ErrorCode.ENHANCE_YOUR_CALM


def _goaway_code(server_bytes: bytes) -> int | None:
    """Parse what a server sent with a throwaway h2 client and return the GOAWAY error code."""
    parser = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    parser.initiate_connection()
    for event in parser.receive_data(server_bytes):
        if isinstance(event, h2.events.ConnectionTerminated):
            return int(event.error_code)
    return None


async def test_trailers_round_trip() -> None:
    async def grpc_like(stream: Stream) -> None:
        body = await read_all(stream)
        assert stream.trailers == [(b"x-client-trailer", b"1")]
        stream.send_headers([(":status", "200"), ("content-type", "application/grpc")])
        await stream.send(b"reply:" + body)
        stream.send_trailers([("grpc-status", "0"), ("grpc-message", "ok")])

    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/svc/Method"), (":authority", "x")]
    async with h2_server(grpc_like) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(headers)
        await stream.send(b"request")
        stream.send_trailers([("x-client-trailer", "1")])
        response = await run(stream.response_headers())
        assert (b"content-type", b"application/grpc") in response
        assert await run(read_all(stream)) == b"reply:request"
        assert stream.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]


async def test_trailers_only_response() -> None:
    async def unimplemented(stream: Stream) -> None:
        stream.send_headers([(":status", "200"), ("grpc-status", "12")], end_stream=True)

    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/svc/Nope"), (":authority", "x")]
    async with h2_server(unimplemented) as (port, _), h2_client(port) as conn:
        stream = await conn.open_stream(headers, end_stream=True)
        assert (b"grpc-status", b"12") in await run(stream.response_headers())
        assert await run(stream.read()) == b""
        await run(stream.wait_closed())
