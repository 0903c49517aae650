"""TcpPipe (the relay's callback path) driven in memory: our server driver against a stock h2 client, a fake TCP
transport on the other side. Pins down the relay's semantics: half-close both ways, backpressure bounds, resets
both ways, byte counts. No timing: every step is a direct call or one loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from hbone.errors import ConnectRefused, H2ErrorCode, StreamReset
from hbone.net.connection import H2Connection
from hbone.net.relay import DOWNSTREAM, AcceptedPipe, IdleTimeout, TcpPipe, open_pipe, relay
from hbone.net.relay.pipe import QUEUED
from hbone.net.settings import H2Settings, KiB
from hbone.net.stream import Stream
from tests.fakes import FakeTransport, feed

pytestmark = pytest.mark.timeout(10)
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]


class Harness:
    """A stock h2 client -> our server driver -> one stream joined to a TcpPipe over a fake TCP transport."""

    def __init__(self, settings: H2Settings | None = None) -> None:
        self.h2_out = FakeTransport()
        self.tcp = FakeTransport()
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()
        self.release = asyncio.get_running_loop().create_future()
        self.conn = H2Connection(
            client=False, settings=settings or H2Settings.server(ping_interval=None), handler=self._handler
        )
        self.peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        self.conn.connection_made(self.h2_out)
        self.pipe = TcpPipe()
        self.pipe.connection_made(self.tcp)
        self.sid = 1

    async def _handler(self, stream: Stream) -> None:
        self.streams.put_nowait(stream)
        await self.release

    async def open(self, start: bool = True) -> Stream:
        self.peer.send_headers(self.sid, CONNECT)
        self.to_server()
        stream = await self.streams.get()
        if start:
            stream.send_headers([(":status", "200")])
            self.pipe.start(stream)
        await self.to_peer()
        return stream

    def to_server(self) -> None:
        feed(self.conn, bytes(self.peer.data_to_send()))

    async def to_peer(self) -> list[h2.events.Event]:
        await asyncio.sleep(0)  # let scheduled flushes and callbacks run
        data = bytes(self.h2_out.out)
        self.h2_out.out.clear()
        events = list(self.peer.receive_data(data)) if data else []
        self.peer_data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                self.peer.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        return events

    def send(self, data: bytes, end: bool = False) -> None:
        self.peer.send_data(self.sid, data, end_stream=end)
        self.to_server()


def kinds(events: list[h2.events.Event]) -> list[type[Any]]:
    return [type(e) for e in events]


async def test_half_close_both_ways_and_byte_counts() -> None:
    h = Harness()
    await h.open()
    h.send(b"hello", end=True)  # END_STREAM -> TCP FIN after the bytes
    assert bytes(h.tcp.out) == b"hello" and h.tcp.eof
    assert not h.pipe.done.done()  # the other direction is still open
    h.pipe.data_received(b"world!")
    events = await h.to_peer()
    assert h.peer_data == b"world!" and h2.events.StreamEnded not in kinds(events)
    assert h.pipe.eof_received() is True  # keep the transport: TCP half-close
    events = await h.to_peer()
    assert h2.events.StreamEnded in kinds(events)  # TCP FIN -> END_STREAM
    result = await h.pipe.wait()
    assert result.error is None and result.ended_first == DOWNSTREAM  # the stream (client side) ended first
    assert (result.sent, result.received) == (5, 6)
    assert h.tcp.closed and not h.tcp.aborted


async def test_tcp_first_half_close_and_bytes_before_start() -> None:
    h = Harness()
    h.pipe.data_received(b"SSH-2.0-x\r\n")  # a server-first upstream, before the 200 went out
    assert h.tcp.reading  # held (bounded: reading pauses beyond 64 KiB, test_accepted_pipe_stops_reading...)
    stream = await h.open(start=False)
    h.send(b"early")  # the client did not wait for the 200
    stream.send_headers([(":status", "200")])
    h.pipe.start(stream)
    assert h.tcp.reading and bytes(h.tcp.out) == b"early"
    h.pipe.eof_received()
    events = await h.to_peer()
    assert h.peer_data == b"SSH-2.0-x\r\n" and h2.events.StreamEnded in kinds(events)
    assert not h.pipe.done.done() and not h.tcp.eof
    h.send(b"", end=True)
    result = await h.pipe.wait()
    assert h.tcp.eof and result.error is None
    assert (result.sent, result.received) == (5, 11)


async def test_tcp_reading_pauses_while_the_stream_queue_is_full() -> None:
    h = Harness(H2Settings.server(ping_interval=None, max_send_buffer=32 * KiB))
    await h.open()
    chunk = bytes(16 * KiB)
    sent = 0
    while h.tcp.reading:  # the peer grants 64 KiB of window and no more until it reads
        h.pipe.data_received(chunk)
        sent += len(chunk)
        assert sent < 256 * KiB
    stream = h.pipe.stream
    assert stream is not None and stream.buffered > 32 * KiB
    assert sent <= 65_535 + 32 * KiB + len(chunk)  # bound: window + send buffer + one read
    while not h.tcp.reading:  # the peer reads (WINDOW_UPDATEs), the queue drains, reading resumes
        await h.to_peer()
        h.to_server()
        await asyncio.sleep(0)
    assert stream.buffered <= 16 * KiB
    assert h.pipe.to_stream == sent


def read_into(pipe: TcpPipe, data: bytes) -> None:
    """One TCP read as the event loop does it for a buffered protocol: into the pipe's buffer, then the count."""
    buf = pipe.get_buffer(len(data))
    memoryview(buf)[: len(data)] = data
    pipe.buffer_updated(len(data))


async def test_reads_are_framed_from_the_shared_buffer_and_what_waits_for_window_is_kept_intact() -> None:
    """Reads land in one buffer shared by every pipe of the thread; what the stream cannot send yet (the h2 peer
    grants a 64 KiB window) must be a copy, since the next read, by any pipe, overwrites the buffer. Above a frame's
    worth of unsent bytes reading pauses (the rest stays in the kernel) and resumes once the queue drained."""
    h = Harness()
    await h.open()
    other = TcpPipe()  # a second pipe of the same thread reads into the same buffer
    assert other.get_buffer(1) is h.pipe.get_buffer(1)
    first = bytes(range(256)) * 800  # 200 KiB: the 64 KiB window takes a third of it
    read_into(h.pipe, first)
    stream = h.pipe.stream
    assert stream is not None and stream.buffered > QUEUED and not h.tcp.reading  # bounded: wait for credit
    read_into(other, b"\xff" * len(first))  # another connection's read reuses the buffer
    received = bytearray()
    while not h.tcp.reading:  # the peer reads (WINDOW_UPDATEs), the queue drains, reading resumes
        await h.to_peer()
        received += h.peer_data
        h.to_server()
        await asyncio.sleep(0)
    assert stream.buffered <= QUEUED // 2
    read_into(h.pipe, b"tail")
    h.pipe.eof_received()
    while len(received) < len(first) + 4:
        await h.to_peer()
        received += h.peer_data
        h.to_server()
    assert bytes(received) == first + b"tail" and h.pipe.to_stream == len(first) + 4


async def test_writing_a_mutable_buffer_sends_its_bytes_as_they_were_at_the_call() -> None:
    """`Stream.write(bytearray)` frames straight from the caller's buffer when the window allows and copies the
    rest before returning: reusing the buffer afterwards changes nothing that is sent."""
    h = Harness()
    stream = await h.open()
    data = bytearray(b"a" * 100_000)  # more than the 64 KiB window: part framed now, the rest queued
    stream.write(data)
    assert 0 < stream.buffered < len(data)
    data[:] = b"b" * len(data)
    stream.write(memoryview(data)[:10])
    stream.write_eof()
    received = bytearray()
    while len(received) < 100_010:
        await h.to_peer()
        received += h.peer_data
        h.to_server()
    assert bytes(received) == b"a" * 100_000 + b"b" * 10


async def test_stream_credit_withheld_while_tcp_is_over_its_high_water_mark() -> None:
    settings = H2Settings.server(ping_interval=None, initial_stream_window=65_535, connection_window=1 << 20)
    h = Harness(settings)
    await h.open()
    h.pipe.pause_writing()
    h.send(bytes(40_000))  # more than 1/4 of the window: normally credited at once
    events = await h.to_peer()
    assert not any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == h.sid for e in events)
    assert len(h.tcp.out) == 40_000
    assert h.peer.local_flow_control_window(h.sid) == 65_535 - 40_000  # the peer may send one window, no more
    h.pipe.resume_writing()
    events = await h.to_peer()
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == h.sid for e in events)
    assert h.peer.local_flow_control_window(h.sid) == 65_535


async def test_stream_reset_by_peer_aborts_tcp() -> None:
    h = Harness()
    await h.open()
    h.send(b"abc")
    h.peer.reset_stream(h.sid, H2ErrorCode.CANCEL)
    h.to_server()
    result = await h.pipe.wait()
    assert h.tcp.aborted
    assert isinstance(result.error, StreamReset) and result.error.code == H2ErrorCode.CANCEL
    assert result.sent == 3


async def test_tcp_reset_resets_the_stream_with_connect_error() -> None:
    h = Harness()
    await h.open()
    h.pipe.data_received(b"xy")
    h.pipe.connection_lost(ConnectionResetError(104, "reset by peer"))
    events = await h.to_peer()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CONNECT_ERROR
    result = await h.pipe.wait()
    assert isinstance(result.error, ConnectionResetError) and result.received == 2


async def test_data_after_tcp_closed_resets_the_stream() -> None:
    h = Harness()
    await h.open()
    h.pipe.connection_lost(None)  # closed without error: the stream direction ends (END_STREAM)
    events = await h.to_peer()
    assert h2.events.StreamEnded in kinds(events)
    h.send(b"too late")  # nowhere to write it
    events = await h.to_peer()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CONNECT_ERROR
    assert isinstance((await h.pipe.wait()).error, ConnectionResetError)


async def test_cancelling_the_waiter_resets_with_cancel_and_aborts_tcp() -> None:
    h = Harness()
    await h.open()
    waiter = asyncio.ensure_future(h.pipe.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    events = await h.to_peer()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CANCEL
    assert h.tcp.aborted


async def test_connection_loss_aborts_tcp() -> None:
    h = Harness()
    await h.open()
    h.conn.connection_lost(None)
    result = await h.pipe.wait()
    assert h.tcp.aborted and result.error is not None


# --- AcceptedPipe: the tunnel is opened after the TCP accept (hbone forward) ---------------------------------------


def accepted() -> tuple[Harness, asyncio.Future[Stream], set[asyncio.Task[None]], AcceptedPipe, FakeTransport]:
    """An AcceptedPipe on a fake TCP transport whose tunnel opens when the returned future is given a stream."""
    h = Harness()
    opened: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

    async def open_stream() -> Stream:
        return await opened

    tasks: set[asyncio.Task[None]] = set()
    pipe = AcceptedPipe(open_stream, tasks)
    tcp = FakeTransport()
    pipe.connection_made(tcp)
    return h, opened, tasks, pipe, tcp


async def open_tunnel(h: Harness, opened: asyncio.Future[Stream]) -> None:
    """The tunnel the AcceptedPipe waits for opens (200), and the pipe's open task gets to run."""
    stream = await h.open(start=False)
    stream.send_headers([(":status", "200")])
    opened.set_result(stream)
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_accepted_pipe_sends_early_bytes_first_once_the_tunnel_is_open() -> None:
    h, opened, tasks, pipe, tcp = accepted()
    pipe.data_received(b"GET / HTTP/1.0\r\n\r\n")  # the client talks before the tunnel exists
    assert tcp.reading and len(tasks) == 1  # a small request is held without pausing (an epoll call each way)
    await open_tunnel(h, opened)
    assert tcp.reading
    await h.to_peer()
    assert h.peer_data == b"GET / HTTP/1.0\r\n\r\n"
    h.send(b"HTTP/1.0 200 OK\r\n\r\n", end=True)
    pipe.eof_received()
    result = await pipe.wait()
    assert bytes(tcp.out) == b"HTTP/1.0 200 OK\r\n\r\n" and tcp.eof and result.error is None
    await asyncio.gather(*tasks)  # the open task ends with the relay


async def test_accepted_pipe_stops_reading_beyond_its_early_bound() -> None:
    h, opened, tasks, pipe, tcp = accepted()
    chunks = [bytes([i]) * (40 * KiB) for i in range(2)]
    pipe.data_received(chunks[0])
    assert tcp.reading
    pipe.data_received(chunks[1])  # 80 KiB held: over the 64 KiB bound, so the client waits
    assert not tcp.reading
    await open_tunnel(h, opened)
    assert tcp.reading
    await h.to_peer()
    got = h.peer_data
    h.to_server()  # the peer's WINDOW_UPDATE: 80 KiB is more than h2's default 64 KiB window
    await h.to_peer()
    assert got + h.peer_data == b"".join(chunks)
    pipe.abort()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_accepted_pipe_drops_the_client_when_the_tunnel_cannot_open() -> None:
    errors: list[BaseException] = []

    async def open_stream() -> Stream:
        raise ConnectRefused(503, "no upstream")

    tasks: set[asyncio.Task[None]] = set()
    pipe = AcceptedPipe(open_stream, tasks, errors.append)
    tcp = FakeTransport()
    pipe.connection_made(tcp)
    result = await pipe.wait()
    assert tcp.aborted and isinstance(result.error, ConnectRefused) and errors == [result.error]


async def test_accepted_pipe_resets_a_tunnel_opened_after_the_client_left() -> None:
    h = Harness()
    opened: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

    async def open_stream() -> Stream:
        return await opened

    tasks: set[asyncio.Task[None]] = set()
    pipe = AcceptedPipe(open_stream, tasks)
    pipe.connection_made(FakeTransport())
    pipe.connection_lost(ConnectionResetError(104, "reset"))
    stream = await h.open(start=False)
    stream.send_headers([(":status", "200")])
    opened.set_result(stream)
    await asyncio.gather(*tasks)
    events = await h.to_peer()
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CANCEL


async def test_small_messages_are_credited_in_bounded_steps() -> None:
    settings = H2Settings.server(ping_interval=None, initial_stream_window=65_535, connection_window=1 << 20)
    h = Harness(settings)
    stream = await h.open()
    step = 65_535 // 8
    for _ in range(40):
        h.send(bytes(1000))
        assert stream._recv_len < step  # never more than one step uncredited
    assert h.pipe.from_stream == 40_000 and len(h.tcp.out) == 40_000


async def test_idle_timeout_resets_the_stream_and_aborts_tcp() -> None:
    h = Harness()
    stream = await h.open(start=False)
    stream.send_headers([(":status", "200")])
    result = await relay(stream, h.pipe, idle_timeout=0.02)  # nothing moves either way
    assert isinstance(result.error, IdleTimeout) and result.ended_first is None
    assert h.tcp.aborted
    resets = [e for e in await h.to_peer() if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CANCEL


async def test_relay_maps_counts_by_side_and_names_the_side_that_ended_first() -> None:
    h = Harness()
    stream = await h.open(start=False)
    stream.send_headers([(":status", "200")])
    task = asyncio.ensure_future(relay(h.pipe, stream))  # TCP as the downstream (hbone forward's shape)
    await asyncio.sleep(0)
    h.pipe.data_received(b"request")
    assert h.pipe.eof_received() is True  # the TCP side (downstream) ends first
    h.send(b"answer", end=True)
    result = await task
    assert (result.sent, result.received, result.ended_first) == (7, 6, DOWNSTREAM) and result.error is None


async def test_clean_closes_return_every_byte_to_the_connection_window() -> None:
    """Credit goes back in steps; what the last step still owed must be returned when the stream ends, or each
    tunnel leaks it from the connection window and a pooled connection stalls after enough tunnels. 200 tunnels
    of 1000 bytes through a 64 KiB connection window: without the final credit the peer runs out of window."""
    settings = H2Settings.server(ping_interval=None, initial_stream_window=65_535, connection_window=65_535)
    h = Harness(settings)
    for i in range(200):
        h.sid = 1 + 2 * i
        stream = await h.open(start=False)
        stream.send_headers([(":status", "200")])
        tcp = FakeTransport()
        pipe = TcpPipe()
        pipe.connection_made(tcp)
        pipe.start(stream)
        h.send(b"x" * 1000, end=True)  # h2 raises FlowControlError here once the window is gone
        assert pipe.eof_received() is True
        result = await pipe.wait()
        await h.to_peer()
        assert result.error is None and bytes(tcp.out) == b"x" * 1000


# --- open_pipe's dial timeout ----------------------------------------------------------------------------------------


async def _never(*args: object, **kwargs: object) -> tuple[object, TcpPipe]:
    await asyncio.get_running_loop().create_future()  # a dial that never completes
    raise AssertionError("unreachable")


async def test_open_pipe_times_out_as_timeout_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", _never)
    with pytest.raises(TimeoutError):
        await open_pipe("127.0.0.1", 9, 0.01)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our cancellation was taken back


async def test_open_pipe_cancelled_by_someone_else_stays_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", _never)
    dial = asyncio.ensure_future(open_pipe("127.0.0.1", 9, 60.0))
    await asyncio.sleep(0)
    dial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dial


async def test_open_pipe_connects_within_its_timeout() -> None:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        pipe = await open_pipe("127.0.0.1", port, 10.0)
        assert pipe.transport is not None
        await asyncio.sleep(0)  # no cancellation left behind
        pipe.transport.close()
    finally:
        server.close()


class _Gate:
    def __init__(self, room: int) -> None:
        self.room, self.released = room, 0

    def admit(self, peer: object) -> bool:
        if self.room == 0:
            return False
        self.room -= 1
        return True

    def release(self) -> None:
        self.released += 1


async def test_accepted_pipe_takes_its_listener_place_and_gives_it_back_once() -> None:
    async def never() -> Stream:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    gate, tasks = _Gate(1), set[asyncio.Task[None]]()
    refused, admitted = AcceptedPipe(never, tasks, gate=gate), AcceptedPipe(never, tasks, gate=gate)
    tcp_admitted, tcp_refused = FakeTransport(), FakeTransport()
    admitted.connection_made(tcp_admitted)
    assert len(tasks) == 1 and not tcp_admitted.aborted
    refused.connection_made(tcp_refused)
    assert tcp_refused.aborted and len(tasks) == 1  # refused: aborted, no tunnel opened
    refused.connection_lost(None)
    assert gate.released == 0
    admitted.connection_lost(None)
    admitted.connection_lost(None)
    assert gate.released == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
