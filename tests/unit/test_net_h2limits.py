"""HTTP/2 abuse limits of the driver, driven in memory against a stock h2 client: rapid reset, unanswered streams,
control-frame floods, a peer that does not read, oversized and slowly sent frames, small reads for floods."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import PingFrame, SettingsFrame

from hbone import limits
from hbone.errors import ConfigError, H2ErrorCode
from hbone.net.abuse import SMALL_READ
from hbone.net.connection import H2Connection
from hbone.net.h2.framebuffer import ZeroCopyFrameBuffer
from hbone.net.settings import H2Settings, MiB
from hbone.net.stream import Stream
from tests.fakes import FakeTransport, feed

pytestmark = pytest.mark.timeout(20)
CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]


class Server:
    """Our server driver with a handler that never answers (an upstream dial that hangs), and a stock h2 client."""

    def __init__(self, **settings: Any) -> None:
        self.started = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.hold = asyncio.Event()
        self.transport = FakeTransport(peername=("127.0.0.1", 4242))
        self.conn = H2Connection(
            client=False, settings=H2Settings.server(ping_interval=None, **settings), handler=self.handler
        )
        self.conn.connection_made(self.transport)
        self.peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        self.send()
        self.receive()

    async def handler(self, stream: Stream) -> None:
        self.started += 1
        try:
            await self.release.wait()
            stream.send_headers([(":status", "200")])
            await self.hold.wait()  # an open tunnel
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def send(self, extra: bytes = b"") -> None:
        feed(self.conn, self.peer.data_to_send() + extra)

    def receive(self) -> list[h2.events.Event]:
        data = bytes(self.transport.out)
        self.transport.out.clear()
        return list(self.peer.receive_data(data)) if data else []

    def goaway(self) -> int | None:
        for event in self.receive():
            if isinstance(event, h2.events.ConnectionTerminated):
                return int(event.error_code)
        return None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_rapid_reset_gets_goaway_and_cancels_the_work() -> None:
    before = limits.trip_counts()["h2_rapid_reset"]
    srv = Server(max_resets_per_second=50)
    for _ in range(40):  # under the limit: nothing happens but the work is cancelled
        sid = srv.peer.get_next_available_stream_id()
        srv.peer.send_headers(sid, CONNECT)
        srv.peer.reset_stream(sid, H2ErrorCode.CANCEL)
    srv.send()
    await settle()
    assert not srv.conn.closed and srv.goaway() is None
    assert len(srv.conn._router.tasks) == 0 and len(srv.conn._router.pending) == 0
    for _ in range(200):
        sid = srv.peer.get_next_available_stream_id()
        srv.peer.send_headers(sid, CONNECT)
        srv.peer.reset_stream(sid, H2ErrorCode.CANCEL)
    srv.send()
    await settle()
    assert srv.goaway() == H2ErrorCode.ENHANCE_YOUR_CALM
    assert srv.conn.closed
    assert len(srv.conn._router.tasks) == 0  # every handler was cancelled, none left running
    assert srv.started == srv.cancelled  # handlers that ran were cancelled; the rest never started
    assert limits.trip_counts()["h2_rapid_reset"] == before + 1


async def test_resets_after_the_answer_are_not_premature() -> None:
    srv = Server(max_resets_per_second=5)
    srv.release.set()
    for _ in range(20):
        sid = srv.peer.get_next_available_stream_id()
        srv.peer.send_headers(sid, CONNECT)
        srv.send()
        await settle()
        srv.receive()  # the 200
        srv.peer.reset_stream(sid, H2ErrorCode.CANCEL)
        srv.send()
    await settle()
    assert not srv.conn.closed and srv.goaway() is None


async def test_unanswered_streams_are_capped_with_refused_stream() -> None:
    before = limits.trip_counts()["h2_pending_streams"]
    srv = Server(max_pending_streams=10)
    for _ in range(15):
        srv.peer.send_headers(srv.peer.get_next_available_stream_id(), CONNECT)
    srv.send()
    await settle()
    refused = [e for e in srv.receive() if isinstance(e, h2.events.StreamReset)]
    assert len(refused) == 5 and all(e.error_code == H2ErrorCode.REFUSED_STREAM for e in refused)
    assert srv.started == 10
    srv.release.set()  # answered: slots free again (the tunnels stay open)
    await settle()
    srv.peer.send_headers(srv.peer.get_next_available_stream_id(), CONNECT)
    srv.send()
    await settle()
    assert srv.started == 11
    assert limits.trip_counts()["h2_pending_streams"] == before + 5


@pytest.mark.parametrize("frame", [PingFrame(0, b"12345678"), SettingsFrame(0, {SettingsFrame.ENABLE_PUSH: 0})])
async def test_control_frame_flood_gets_goaway(frame: Any) -> None:
    srv = Server(max_control_frames_per_second=100)
    srv.send(frame.serialize() * 50)
    assert not srv.conn.closed
    srv.send(frame.serialize() * 100)
    assert srv.goaway() == H2ErrorCode.ENHANCE_YOUR_CALM and srv.conn.closed


async def test_peer_that_does_not_read_stops_our_reading() -> None:
    srv = Server(max_outbound_buffer=1 * MiB)
    srv.transport.buffered = 2 * MiB  # its ACKs pile up unread
    srv.send(PingFrame(0, b"12345678").serialize())
    assert not srv.transport.reading
    srv.transport.buffered = 0
    srv.conn.pause_writing()
    srv.conn.resume_writing()  # the transport drained below its low-water mark
    assert srv.transport.reading


async def test_a_flood_of_small_frames_gets_small_reads() -> None:
    srv = Server(max_control_frames_per_second=100_000)
    assert len(srv.conn.get_buffer(-1)) > SMALL_READ
    srv.send(PingFrame(0, b"12345678").serialize() * 1000)
    assert len(srv.conn.get_buffer(-1)) == SMALL_READ
    srv.peer.send_headers(srv.peer.get_next_available_stream_id(), CONNECT)
    srv.peer.send_data(1, b"x" * 60_000)
    srv.send()
    assert len(srv.conn.get_buffer(-1)) > SMALL_READ  # ordinary traffic: back to full reads


async def test_oversized_frame_is_refused_from_its_header() -> None:
    srv = Server()
    # A DATA frame header announcing 16 MiB - 1 (over our 1 MiB SETTINGS_MAX_FRAME_SIZE), then a few body bytes.
    srv.send(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 100)
    assert srv.goaway() == H2ErrorCode.FRAME_SIZE_ERROR and srv.conn.closed


def test_slow_frame_is_reassembled_in_place() -> None:
    buf = ZeroCopyFrameBuffer(server=False)
    buf.max_frame_size = 1 * MiB
    payload = b"p" * (256 * 1024)
    frame = len(payload).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + payload
    owners = set()
    got: list[Any] = []
    for i in range(0, len(frame), 512):
        buf.add_data(frame[i : i + 512])
        got += list(buf)
        owners.add(id(buf._data))
    assert len(owners) <= 3  # appended in place, not a new copy of the pending frame per read (~512 reads)
    assert len(got) == 1 and got[0].data == payload


def test_limit_settings_are_validated() -> None:
    for bad in (
        {"max_outbound_buffer": 1000},  # under the transports' high-water mark: reading would never resume
        {"max_resets_per_second": 0},
        {"max_pending_streams": 0},
        {"preface_timeout": 0},
        {"idle_timeout": -1},
    ):
        with pytest.raises(ConfigError):
            H2Settings.server(**bad)
    assert H2Settings.server(max_pending_streams=None).pending_stream_limit == 200
