"""H2Connection driven in memory: a fake transport on one side, a stock sans-IO h2 peer on the other. These pin
down behaviour that is hard to provoke over sockets: frame batches, exact credit points, settings."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from hbone.errors import ConfigError, ConnectionLost, H2ErrorCode, StreamReset
from hbone.net.connection import H2Connection
from hbone.net.scheduler import record_fit
from hbone.net.settings import H2Settings, KiB, MiB
from hbone.net.stream import Stream
from hbone.net.streamtypes import StreamClosed, header_list_size
from tests.fakes import FakeTransport, feed

pytestmark = pytest.mark.timeout(10)
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]


class Pair:
    """Our client driver against a stock h2 server peer."""

    def __init__(self, settings: H2Settings | None = None, peer_settings: dict[int, int] | None = None) -> None:
        self.transport = FakeTransport()
        self.conn = H2Connection(client=True, settings=settings or H2Settings.client(ping_interval=None))
        self.peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.peer.initiate_connection()
        if peer_settings:
            self.peer.update_settings(peer_settings)
        self.conn.connection_made(self.transport)

    async def to_peer(self) -> list[h2.events.Event]:
        await asyncio.sleep(0)  # let scheduled flushes run
        data = bytes(self.transport.out)
        self.transport.out.clear()
        return list(self.peer.receive_data(data)) if data else []

    def to_conn(self) -> None:
        feed(self.conn, bytes(self.peer.data_to_send()))


async def test_settings_advertised_and_connection_window_opened() -> None:
    pair = Pair()
    events = await pair.to_peer()
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    codes = h2.settings.SettingCodes
    assert changed[codes.INITIAL_WINDOW_SIZE].new_value == 4 * MiB
    assert changed[codes.MAX_FRAME_SIZE].new_value == 1 * MiB
    assert changed[codes.MAX_CONCURRENT_STREAMS].new_value == 100
    assert changed[codes.MAX_HEADER_LIST_SIZE].new_value == 16 * KiB
    assert changed[codes.ENABLE_PUSH].new_value == 0
    assert pair.peer.outbound_flow_control_window == 16 * MiB


async def test_window_credited_only_when_the_application_reads() -> None:
    pair = Pair(H2Settings.client(ping_interval=None, initial_stream_window=65_535))
    await pair.to_peer()
    pair.to_conn()
    stream = await pair.conn.open_stream(CONNECT)
    await pair.to_peer()
    pair.peer.send_headers(1, [(b":status", b"200")])
    pair.peer.send_data(1, b"x" * 60_000)  # one 60 KB frame in the same batch as the SETTINGS ACK
    pair.to_conn()
    events = await pair.to_peer()
    assert not any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1 for e in events)
    assert pair.peer.local_flow_control_window(1) == 65_535 - 60_000
    assert len(await stream.read(10_000)) == 10_000
    assert len(await stream.read()) == 50_000
    events = await pair.to_peer()
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1 for e in events)
    assert pair.peer.local_flow_control_window(1) == 65_535


async def test_rst_later_in_batch_does_not_break_send_path() -> None:
    """docs/performance.md pitfall: WINDOW_UPDATE then RST_STREAM in one read. Handling the window update makes
    us send on a stream h2 has already closed; that must become a StreamReset with the peer's code."""
    pair = Pair(peer_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    await pair.to_peer()
    pair.to_conn()  # peer SETTINGS: stream window 0
    await pair.to_peer()  # our SETTINGS ACK
    stream = await pair.conn.open_stream(CONNECT)
    stream.write(b"queued until the window opens")
    await pair.to_peer()
    assert stream.buffered > 0
    pair.peer.increment_flow_control_window(100, stream_id=1)
    pair.peer.reset_stream(1, H2ErrorCode.CONNECT_ERROR)
    pair.to_conn()  # one batch: WINDOW_UPDATE + RST_STREAM
    await asyncio.sleep(0)
    assert isinstance(stream.error, StreamReset) and stream.error.code == H2ErrorCode.CONNECT_ERROR
    assert not pair.conn.closed and pair.conn.is_usable
    with pytest.raises(StreamReset):
        await stream.read()
    again = await pair.conn.open_stream(CONNECT)
    assert again.stream_id == 3


async def test_reset_after_complete_response_keeps_the_response() -> None:
    pair = Pair()
    await pair.to_peer()
    pair.to_conn()
    stream = await pair.conn.open_stream(CONNECT)
    await pair.to_peer()
    pair.peer.send_headers(1, [(b":status", b"200")])
    pair.peer.send_data(1, b"whole response", end_stream=True)
    pair.peer.reset_stream(1, H2ErrorCode.NO_ERROR)  # RFC 9113 §8.1: "stop sending the request"
    pair.to_conn()
    assert await stream.read() == b"whole response"
    assert await stream.read() == b""
    assert stream.error is None and stream.closed
    with pytest.raises(StreamClosed):
        stream.write(b"late")


async def test_peer_goaway_with_error_fails_everything() -> None:
    pair = Pair()
    await pair.to_peer()
    pair.to_conn()
    stream = await pair.conn.open_stream(CONNECT)
    await pair.to_peer()
    pair.peer.close_connection(error_code=H2ErrorCode.PROTOCOL_ERROR, last_stream_id=1)
    pair.to_conn()
    with pytest.raises(ConnectionLost, match="GOAWAY"):
        await stream.read()
    # Closed for us at once; the socket sends FIN and keeps reading a while, so what the peer wrote after its
    # GOAWAY is not answered with a reset; then it closes.
    assert pair.conn.closed and pair.transport.eof and pair.transport.reading
    await asyncio.wait_for(_wait_transport_closed(pair.transport), 5)


async def _wait_transport_closed(transport: FakeTransport) -> None:
    while not transport.closed:  # noqa: ASYNC110 - the linger timer closes the fake transport
        await asyncio.sleep(0.01)


async def _big_frame_peer() -> tuple[Pair, Stream]:
    """A peer that allows 1 MiB frames and windows, and one open stream to it."""
    codes = h2.settings.SettingCodes
    pair = Pair(peer_settings={codes.MAX_FRAME_SIZE: 1 << 20, codes.INITIAL_WINDOW_SIZE: 1 << 20})
    pair.peer.increment_flow_control_window(1 << 20)
    await pair.to_peer()
    pair.to_conn()
    await pair.to_peer()  # our ACK of the peer's SETTINGS: its 1 MiB frame limit applies from the next batch
    return pair, await pair.conn.open_stream(CONNECT)


async def test_data_frames_sent_at_most_64k_even_if_peer_allows_more() -> None:
    pair, stream = await _big_frame_peer()
    stream.write(b"y" * 150_000)
    events = await pair.to_peer()
    sizes = [len(e.data) for e in events if isinstance(e, h2.events.DataReceived)]
    assert sizes == [65_527, 65_527, 150_000 - 2 * 65_527]  # frames of whole TLS records (record_fit)
    assert stream.bytes_out == 150_000


async def test_queued_writes_are_packed_into_full_frames() -> None:
    pair, stream = await _big_frame_peer()
    pair.conn.pause_writing()  # the writes queue up in the stream ...
    chunks = [bytes([i]) * 40_000 for i in range(5)]
    for chunk in chunks:
        stream.write(chunk)
    pair.conn.resume_writing()  # ... and leave as frames of whole TLS records, not one frame per write
    events = await pair.to_peer()
    data = [e.data for e in events if isinstance(e, h2.events.DataReceived)]
    assert [len(d) for d in data] == [65_527, 65_527, 65_527, 200_000 - 3 * 65_527]
    assert b"".join(data) == b"".join(chunks)
    assert stream.bytes_out == 200_000


async def test_streaming_writes_leave_no_small_frames_and_the_tail_still_goes_out() -> None:
    pair, stream = await _big_frame_peer()
    chunks = [bytes([i]) * 65_536 for i in range(4)]
    for chunk in chunks:  # what a bulk writer does within one loop iteration
        stream.write(chunk)
    events = await pair.to_peer()  # one iteration later the deferred tail is out too
    data = [e.data for e in events if isinstance(e, h2.events.DataReceived)]
    assert [len(d) for d in data] == [65_527] * 4 + [4 * 9]  # not a 65,527 + 9 pair per write
    assert b"".join(data) == b"".join(chunks)
    stream.write(b"small")  # a write that follows no full frame goes out at once
    events = await pair.to_peer()
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [b"small"]


def test_record_fit() -> None:
    assert record_fit(65_536) == 65_527 and (65_527 + 9) % 16_384 == 0
    assert record_fit(16_384) == 16_375
    assert record_fit(1 << 20) == (1 << 20) - 9
    assert record_fit(16_000) == 16_000  # below one record: nothing to fit
    assert record_fit(32_000) == 16_375


async def test_data_frames_follow_a_smaller_peer_limit() -> None:
    pair = Pair()  # the peer keeps the RFC 9113 default of 16 KiB
    await pair.to_peer()
    pair.to_conn()
    stream = await pair.conn.open_stream(CONNECT)
    stream.write(b"y" * 40_000)
    events = await pair.to_peer()
    sizes = [len(e.data) for e in events if isinstance(e, h2.events.DataReceived)]
    assert sizes == [16_375, 16_375, 40_000 - 32_750]


async def test_ping_timeout_uses_timers() -> None:
    pair = Pair(H2Settings.client(ping_interval=0.01, ping_timeout=0.05))
    stream = await pair.conn.open_stream(CONNECT)
    # the peer never answers (nothing is fed back): the deadline timer must drop the connection
    await asyncio.wait_for(_wait_closed_flag(pair.conn), 5)
    assert pair.transport.aborted
    assert isinstance(stream.error, ConnectionLost)


async def _wait_closed_flag(conn: H2Connection) -> None:
    while not conn.closed:  # noqa: ASYNC110 - the fake transport never calls connection_lost
        await asyncio.sleep(0.01)


def test_settings_defaults_and_validation() -> None:
    client, server = H2Settings.client(), H2Settings.server()
    assert (client.max_concurrent_streams, server.max_concurrent_streams) == (100, 200)
    assert (client.max_header_list_size, server.max_header_list_size) == (16 * KiB, 64 * KiB)
    assert client.initial_stream_window == 4 * MiB and client.connection_window == 16 * MiB
    assert client.max_frame_size == 1 * MiB and client.max_send_frame_size == 64 * KiB
    assert (client.ping_interval, client.ping_timeout, client.drain_deadline) == (10.0, 20.0, 5.0)
    assert server.max_send_buffer < client.max_send_buffer
    assert H2Settings.server(max_concurrent_streams=5).max_concurrent_streams == 5
    assert client.replace(ping_interval=None).ping_interval is None
    for bad in (
        {"max_frame_size": 1000},
        {"initial_stream_window": 2**31},
        {"ping_interval": 0},
        {"max_send_buffer": 0},
    ):
        with pytest.raises(ConfigError):
            H2Settings(**bad)  # type: ignore[arg-type]


def test_header_list_size_counts_rfc_overhead() -> None:
    assert header_list_size([(b"ab", b"cde")]) == 2 + 3 + 32


async def test_complete_response_survives_connection_loss() -> None:
    pair = Pair()
    await pair.to_peer()
    pair.to_conn()
    stream = await pair.conn.open_stream(CONNECT)  # our side stays open
    await pair.to_peer()
    pair.peer.send_headers(1, [(b":status", b"200")])
    pair.peer.send_data(1, b"complete", end_stream=True)
    pair.to_conn()
    pair.conn.connection_lost(None)
    assert await stream.read() == b"complete"
    assert await stream.read() == b""
    with pytest.raises(ConnectionLost):
        await stream.send(b"too late")


async def test_small_write_on_idle_connection_goes_out_at_once() -> None:
    """Latency: the first small write of a loop iteration is not held back a turn; larger ones are coalesced."""
    pair = Pair()
    await pair.to_peer()
    pair.to_conn()
    await pair.to_peer()
    stream = await pair.conn.open_stream(CONNECT)
    assert not pair.transport.out  # HEADERS wait for the iteration's one write (many tunnels open per iteration) ...
    stream.write(b"hi")  # ... unless a DATA frame follows in the same iteration: it goes out at once, with them
    assert len(pair.transport.out) > 9 + 2
    events = await pair.to_peer()  # next iteration
    assert [type(e) for e in events][:2] == [h2.events.RequestReceived, h2.events.DataReceived]
    stream.write(b"ping")
    stream.write(b"pong")  # same iteration: coalesced, goes out with the scheduled flush
    assert len(pair.transport.out) == 9 + 4  # one DATA frame so far
    events = await pair.to_peer()
    data = [e.data for e in events if isinstance(e, h2.events.DataReceived)]
    assert data == [b"ping", b"pong"]
    stream.write(b"z" * 20_000)  # more than a frame: one full frame (one TLS record) may go at once ...
    assert len(pair.transport.out) in (0, 9 + 16_375)
    events = await pair.to_peer()  # ... the rest, a short tail, follows one iteration later
    assert [len(e.data) for e in events if isinstance(e, h2.events.DataReceived)] == [16_375, 20_000 - 16_375]


async def test_headers_and_a_bare_end_stream_go_out_with_the_iterations_write() -> None:
    pair = Pair()
    await pair.to_peer()
    pair.to_conn()
    await pair.to_peer()
    streams = [await pair.conn.open_stream(CONNECT) for _ in range(3)]
    assert not pair.transport.out
    events = await pair.to_peer()  # one iteration later, the three HEADERS together
    assert [type(e) for e in events] == [h2.events.RequestReceived] * 3
    for stream in streams:
        stream.write_eof()
    assert not pair.transport.out
    events = await pair.to_peer()
    assert [type(e) for e in events if not isinstance(e, h2.events.DataReceived)] == [h2.events.StreamEnded] * 3


async def test_writes_while_handling_a_read_batch_are_one_write() -> None:
    pair = Pair()
    writes: list[int] = []
    real_write = pair.transport.write
    pair.transport.write = lambda data: (writes.append(len(data)), real_write(data))  # type: ignore[method-assign]
    await pair.to_peer()
    writes.clear()
    pair.peer.ping(b"12345678")
    pair.peer.ping(b"87654321")
    pair.to_conn()  # SETTINGS, two PINGs: ACKs for all three go out in one write at the end of the batch
    assert len(writes) == 1
