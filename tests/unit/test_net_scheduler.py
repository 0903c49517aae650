"""The send scheduler without a transport: an engine, a fake sink and stock h2 (the oracle) decoding what was sent.

Pins the behaviour the connection relies on: frames filled to whole TLS records from several writes, round-robin
among blocked streams, nothing fed to a paused sink, one write per loop iteration (but the first small write of an
idle connection at once), the deferred short tail, and a send on a stream the engine already closed settling on the
next loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.h2 import new_engine
from hbone.net.h2.api import Engine, HeaderList
from hbone.net.scheduler import FLUSH_NOW, SendScheduler, record_fit
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream

REQUEST = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
FRAME = record_fit(64 * 1024)


class Sink:
    """Takes every write (a transport that never pushes back unless `buffered` says so)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


class Host:
    """The connection's side: streams are owned here, the scheduler reports ends and failures."""

    def __init__(self, settings: H2Settings) -> None:
        self.settings = settings
        self.scheduler: SendScheduler
        self.failed: dict[int, HboneError] = {}
        self.ended: list[int] = []

    # SchedulerHost
    def fail_stream(self, stream: Stream, exc: HboneError) -> None:
        self.failed[stream.stream_id] = exc
        stream.fail(exc)

    def end_sent(self, stream: Stream) -> None:
        stream.outbox.ended = True
        self.ended.append(stream.stream_id)

    def check_outbound_headers(self, headers: HeaderList) -> None:
        pass

    # StreamOwner (what Stream.write and friends call)
    ssl_object = None
    peer_cert = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def send_stream_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        self.scheduler.send_headers(stream, headers, end_stream)

    def stream_writable(self, stream: Stream) -> None:
        self.scheduler.pump(stream)

    def credit_stream(self, stream_id: int, n: int) -> None:
        self.scheduler.credit(stream_id, n)

    def reset_stream(self, stream: Stream, code: int) -> None:
        self.scheduler.reset(stream.stream_id, code)


class Rig:
    """A server engine with `streams` request streams opened by a stock h2 client, and a scheduler over a Sink."""

    def __init__(self, streams: int = 1, window: int = (1 << 31) - 1, **settings: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.settings = H2Settings.server(**settings)
        self.engine: Engine = new_engine(client=False, settings=self.settings)
        self.engine.start()
        self.peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.peer.initiate_connection()
        codes = h2.settings.SettingCodes
        self.peer.update_settings({codes.INITIAL_WINDOW_SIZE: window, codes.MAX_FRAME_SIZE: 1 << 20})
        if window > 65_535:
            self.peer.increment_flow_control_window(window - 65_535)
        self.host = Host(self.settings)
        self.sink = Sink()
        self.scheduler = self.host.scheduler = SendScheduler(self.engine, self.settings, self.loop, self.host)
        self.scheduler.sink = self.sink
        self.streams: list[Stream] = []
        for i in range(streams):
            self.peer.send_headers(1 + 2 * i, REQUEST)
        self.engine.receive(memoryview(bytes(self.peer.data_to_send())))
        self.peer.receive_data(bytes(self.engine.take_output()))
        self.engine.receive(memoryview(bytes(self.peer.data_to_send())))  # the peer's SETTINGS ACK
        for i in range(streams):
            stream = Stream(self.host, 1 + 2 * i, local=False, request_headers=REQUEST, loop=self.loop)
            stream.send_headers([(b":status", b"200")])
            self.streams.append(stream)
        self.scheduler.flush()

    async def ready(self) -> Rig:
        """Run the flush the headers scheduled; the peer reads the response headers."""
        await turn()
        self.sent()
        return self

    def sent(self) -> list[h2.events.Event]:
        """What the peer decodes from everything written so far (the writes are consumed)."""
        data = b"".join(self.sink.writes)
        self.sink.writes.clear()
        return list(self.peer.receive_data(data))

    def data(self) -> list[tuple[int, int]]:
        return [(e.stream_id, len(e.data)) for e in self.sent() if isinstance(e, h2.events.DataReceived)]


async def turn() -> None:
    """Let the loop run the callbacks scheduled so far (call_soon), twice for ones scheduled by those."""
    for _ in range(2):
        await asyncio.sleep(0)


async def test_writes_are_packed_into_record_sized_frames() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]
    rig.scheduler.pause()  # writes pile up while the transport is full
    for _ in range(5):
        stream.write(b"x" * 30_000)  # 150,000 bytes: two full frames and the rest
    stream.write_eof()
    assert rig.sink.writes == []
    rig.scheduler.resume()
    assert rig.data() == [(1, FRAME), (1, FRAME), (1, 150_000 - 2 * FRAME), (1, 0)]  # (1, 0): END_STREAM
    assert rig.host.ended == [1] and stream.bytes_out == 150_000


async def test_a_short_tail_after_a_full_frame_waits_one_iteration() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]
    stream.write(b"y" * (FRAME + 100))
    assert stream.buffered == 100  # deferred: the writer may add more in this iteration
    stream.write(b"y" * 100)
    await turn()
    assert rig.data() == [(1, FRAME), (1, 200)]
    stream.write(b"z" * (FRAME + 5))
    stream.write_eof()  # with the end queued nothing waits
    assert stream.buffered == 0


async def test_blocked_streams_are_pumped_round_robin_when_window_opens() -> None:
    rig = await Rig(streams=3, window=10_000).ready()
    for stream in rig.streams:
        stream.write(b"a" * 25_000)
    await turn()
    assert rig.data() == [(1, 10_000), (3, 10_000), (5, 10_000)]
    assert list(rig.scheduler.blocked) == [1, 3, 5]
    for sid in (1, 3, 5):
        rig.peer.increment_flow_control_window(10_000, stream_id=sid)
    rig.peer.increment_flow_control_window(30_000)
    rig.engine.receive(memoryview(bytes(rig.peer.data_to_send())))
    rig.scheduler.pump_blocked()
    rig.scheduler.flush()
    assert rig.data() == [(1, 10_000), (3, 10_000), (5, 10_000)]
    assert list(rig.scheduler.blocked) == [1, 3, 5]  # each re-appended after its turn


async def test_a_paused_sink_gets_nothing_until_it_resumes() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]
    rig.scheduler.pause()
    stream.write(b"p" * 200_000)
    await turn()
    assert rig.sink.writes == [] and 1 in rig.scheduler.blocked and stream.buffered == 200_000
    rig.scheduler.resume()
    await turn()
    assert sum(n for _, n in rig.data()) == 200_000 and not rig.scheduler.blocked


async def test_pausing_mid_pump_keeps_the_rest_queued() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]

    def pause_on_write(data: bytes | bytearray | memoryview) -> None:
        Sink.write(rig.sink, data)
        rig.scheduler.pause()  # the transport's buffer went over its high-water mark

    rig.sink.write = pause_on_write  # type: ignore[method-assign]
    stream.write(b"q" * (4 * FRAME))
    assert len(rig.sink.writes) == 1 and stream.buffered == 3 * FRAME  # one frame flushed early, then stopped


async def test_one_write_per_iteration_but_the_first_small_one_at_once() -> None:
    rig = await Rig(streams=2).ready()
    first, second = rig.streams
    first.write(b"1" * 100)
    assert len(rig.sink.writes) == 1  # idle connection, small: written now (latency)
    second.write(b"2" * 100)
    first.write(b"3" * 100)
    assert len(rig.sink.writes) == 1  # the rest of the iteration is coalesced
    await turn()
    assert len(rig.sink.writes) == 2
    rig.sink.buffered = 1  # a busy transport: even the first write waits for the end of the iteration
    first.write(b"4" * 100)
    assert len(rig.sink.writes) == 2
    await turn()
    assert len(rig.sink.writes) == 3
    assert rig.data() == [(1, 100), (3, 100), (1, 100), (1, 100)]


async def test_nothing_is_written_inside_a_read_batch_until_its_end() -> None:
    rig = await Rig().ready()
    rig.scheduler.receiving = True
    rig.streams[0].write(b"r" * (FLUSH_NOW // 2))
    await turn()
    assert rig.sink.writes == []
    rig.scheduler.receiving = False
    rig.scheduler.flush()
    assert rig.data() == [(1, FLUSH_NOW // 2)]


async def test_a_send_on_a_stream_closed_earlier_in_the_batch_settles_next_iteration() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]
    rig.peer.reset_stream(1, H2ErrorCode.CANCEL)
    rig.engine.receive(memoryview(bytes(rig.peer.data_to_send())))  # the router has not seen the reset yet
    stream.write(b"late")
    assert stream.error is None and stream.buffered == 0  # refused, queue dropped, not failed yet
    await turn()
    exc = rig.host.failed[1]
    assert isinstance(exc, StreamReset) and exc.code == H2ErrorCode.STREAM_CLOSED


async def test_stop_cancels_the_deferred_tail_and_scheduled_flushes() -> None:
    rig = await Rig().ready()
    stream = rig.streams[0]
    rig.scheduler.receiving = True
    stream.write(b"s" * (FRAME + 10))  # one full frame (written early: it fills the buffer), a deferred tail
    assert len(rig.sink.writes) == 1 and stream.buffered == 10
    rig.scheduler.receiving = False
    rig.scheduler.stop()
    rig.scheduler.credit(1, 10)
    rig.scheduler.schedule_flush()
    await turn()
    assert len(rig.sink.writes) == 1 and stream.buffered == 10 and not rig.scheduler.blocked


@pytest.mark.parametrize("limit", [16_384, 65_536, 1 << 20])
def test_record_fit_fills_whole_tls_records(limit: int) -> None:
    fitted = record_fit(limit)
    assert fitted <= limit and (fitted + 9) % 16_384 == 0 and limit - fitted < 16_384
