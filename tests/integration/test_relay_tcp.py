"""relay() on the task path: an HBONE-style CONNECT server relaying each stream to a loopback TCP upstream
(asyncio streams, `TcpEnd`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hbone.errors import H2ErrorCode, StreamReset
from hbone.net.endpoints import connect, serve
from hbone.net.relay import RelayResult, TcpEnd
from hbone.net.relay import relay as relay_ends
from hbone.net.stream import Stream

pytestmark = pytest.mark.timeout(60)
CONNECT = [(":method", "CONNECT"), (":authority", "127.0.0.1:1")]
Upstream = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def relay(upstream: Upstream) -> AsyncIterator[tuple[int, asyncio.Queue[RelayResult]]]:
    """TCP upstream + h2c CONNECT server that relays every stream to it. Yields (h2 port, results)."""
    tcp = await asyncio.start_server(upstream, "127.0.0.1", 0)
    tcp_port = tcp.sockets[0].getsockname()[1]
    results: asyncio.Queue[RelayResult] = asyncio.Queue()

    async def handler(stream: Stream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        stream.send_headers([(":status", "200")])  # ztunnel: 200 only after the upstream connect succeeded
        results.put_nowait(await relay_ends(stream, TcpEnd(reader, writer)))

    h2srv = await serve(handler, "127.0.0.1", 0)
    try:
        yield h2srv.sockets[0].getsockname()[1], results
    finally:
        h2srv.close()
        tcp.close()
        await h2srv.wait_closed()
        await tcp.wait_closed()


async def read_all(stream: Stream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def test_relay_half_close_both_ways_and_counts() -> None:
    """Client FIN reaches the upstream as EOF; the upstream then answers and closes; END_STREAM comes back."""

    async def count_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until EOF: the client's END_STREAM became a TCP FIN
        writer.write(f"got {len(data)}".encode() + data[:10])
        await writer.drain()
        writer.close()

    payload = os.urandom(3 << 20)
    async with relay(count_then_reply) as (port, results):
        conn = await connect("127.0.0.1", port)
        stream = await conn.open_stream(CONNECT)
        await stream.send(payload)
        stream.write_eof()
        reply = await asyncio.wait_for(read_all(stream), 30)
        assert reply == f"got {len(payload)}".encode() + payload[:10]
        result = await asyncio.wait_for(results.get(), 10)
        assert result.error is None
        assert (result.sent, result.received) == (len(payload), len(reply))
        await conn.close()


async def test_relay_server_first_upstream() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-test\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"echo " + line)
        writer.write_eof()
        await reader.read()
        writer.close()

    async with relay(banner) as (port, results):
        conn = await connect("127.0.0.1", port)
        stream = await conn.open_stream(CONNECT)
        assert await asyncio.wait_for(stream.readexactly(14), 10) == b"SSH-2.0-test\r\n"
        await stream.send(b"hi\n")
        assert await asyncio.wait_for(read_all(stream), 10) == b"echo hi\n"  # upstream FIN -> END_STREAM
        stream.write_eof()
        result = await asyncio.wait_for(results.get(), 10)
        assert result.error is None and result.received == 22 and result.sent == 3
        await conn.close()


async def test_upstream_reset_becomes_connect_error() -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: a TCP RST to the relay, not a FIN

    async with relay(rude) as (port, results):
        conn = await connect("127.0.0.1", port)
        stream = await conn.open_stream(CONNECT)
        await stream.send(b"ping")
        with pytest.raises(StreamReset) as info:
            await asyncio.wait_for(read_all(stream), 10)
        # RFC 9113 §8.5: a TCP reset or error is signalled with CONNECT_ERROR
        assert info.value.code == H2ErrorCode.CONNECT_ERROR
        result = await asyncio.wait_for(results.get(), 10)
        assert result.error is not None
        await conn.close()


async def test_stream_reset_aborts_upstream() -> None:
    upstream_saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def patient(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = b""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                got += data
        upstream_saw.set_result(got)
        writer.close()

    async with relay(patient) as (port, results):
        conn = await connect("127.0.0.1", port)
        stream = await conn.open_stream(CONNECT)
        await stream.send(b"abc")
        await asyncio.wait_for(stream.response_headers(), 10)
        stream.reset(H2ErrorCode.CANCEL)
        # the relay aborted the upstream connection: it ended (reset or EOF) without a clean request
        assert b"abc".startswith(await asyncio.wait_for(upstream_saw, 10))
        result = await asyncio.wait_for(results.get(), 10)
        assert isinstance(result.error, StreamReset)
        await conn.close()
