"""A front end's accepted connection handed to the relay's callback path (`hbone.net.relay.core.handoff`): the
listener parses a handshake with asyncio streams, then `relay(TcpEnd(reader, writer, leftover), stream)` moves
the connection to a `TcpPipe`, with what the reader had buffered and an early FIN carried over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from hbone.errors import StreamReset
from hbone.net.endpoints import connect, serve
from hbone.net.relay import RelayResult, TcpEnd, TcpPipe, relay, start_server
from hbone.net.relay.core import handoff
from hbone.net.stream import Stream

pytestmark = pytest.mark.timeout(60)
CONNECT = [(":method", "CONNECT"), (":authority", "127.0.0.1:1")]
IO = 20


async def count_then_reply(stream: Stream) -> None:
    """The far side of the tunnel: read to END_STREAM, answer `got N` + the first bytes, end."""
    stream.send_headers([(":status", "200")])
    data = b""
    with contextlib.suppress(StreamReset):
        while chunk := await stream.read():
            data += chunk
        stream.write(f"got {len(data)} ".encode() + data[:8])
        stream.write_eof()
        await stream.wait_closed()


@contextlib.asynccontextmanager
async def front_end(
    adopted: list[TcpPipe], took: asyncio.Event | None = None
) -> AsyncIterator[tuple[int, asyncio.Queue[RelayResult]]]:
    """h2c server (the far side) + a front end that reads one handshake line, then relays to a tunnel stream."""
    h2srv = await serve(count_then_reply, "127.0.0.1", 0)
    conn = await connect("127.0.0.1", h2srv.sockets[0].getsockname()[1])
    results: asyncio.Queue[RelayResult] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readuntil(b"\n")  # the handshake; what follows may already sit in the reader
        stream = await conn.open_stream(CONNECT)
        await stream.response_headers()
        results.put_nowait(await relay(TcpEnd(reader, writer, line[8:]), stream))

    original = TcpPipe.adopt

    def spy(transport: asyncio.Transport, early: bytes, peer_eof: bool) -> TcpPipe:
        pipe = original(transport, early, peer_eof)
        adopted.append(pipe)
        if took is not None:
            took.set()
        return pipe

    front = await start_server(handle, "127.0.0.1", 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TcpPipe, "adopt", spy)
        try:
            yield front.sockets[0].getsockname()[1], results
        finally:
            front.close()
            await conn.close()
            h2srv.close()


async def test_handshake_leftover_buffered_bytes_and_early_fin_are_carried_over() -> None:
    adopted: list[TcpPipe] = []
    async with front_end(adopted) as (port, results):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # one write: handshake, bytes the front end read with it, bytes still in its reader, then our FIN
        writer.write(b"CONNECT\nAB" + b"x" * 1000)
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), IO)
        assert reply == b"got 1002 ABxxxxxx"
        result = await asyncio.wait_for(results.get(), IO)
        assert (result.sent, result.received, result.error) == (1002, len(reply), None)
        assert len(adopted) == 1  # the callback path carried it
        writer.close()


async def test_bulk_both_ways_through_the_handed_over_connection() -> None:
    adopted: list[TcpPipe] = []
    payload = os.urandom(4 << 20)
    async with front_end(adopted) as (port, results):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"CONNECT\n")
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), IO)
        assert reply == f"got {len(payload)} ".encode() + payload[:8]
        result = await asyncio.wait_for(results.get(), IO)
        assert result.sent == len(payload) and result.error is None and len(adopted) == 1
        writer.close()


async def test_client_reset_after_handoff_is_the_result_error() -> None:
    adopted: list[TcpPipe] = []
    took = asyncio.Event()
    async with front_end(adopted, took) as (port, results):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"CONNECT\nsome")
        await writer.drain()
        await asyncio.wait_for(took.wait(), IO)  # the relay took the connection over
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a TCP RST
        result = await asyncio.wait_for(results.get(), IO)
        assert isinstance(result.error, ConnectionError) and result.ended_first == "downstream"


async def test_only_readers_of_the_relays_server_and_plain_tcp_are_handed_over() -> None:
    got: asyncio.Future[TcpPipe | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await handoff(reader, writer, b""))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)  # a plain StreamReader: stays on the task path
    _, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    assert await asyncio.wait_for(got, IO) is None
    w.close()
    server.close()
