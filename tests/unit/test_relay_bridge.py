"""relay() between two tunnel streams (the stream callback path, `hbone.net.relay.bridge`), in memory: two of our
server drivers, each with a stock h2 client as its peer; one stream of each is joined. Half-close each way,
resets each way, backpressure (credit withheld from one peer while the other does not read), the idle timeout,
and the connection windows after many streams."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import h2.events
import pytest

from hbone.errors import H2ErrorCode, StreamReset
from hbone.net.relay import DOWNSTREAM, UPSTREAM, IdleTimeout, RelayResult, relay
from hbone.net.relay.bridge import StreamBridge
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from tests.unit.test_relay_pipe import Harness

pytestmark = pytest.mark.timeout(10)


def kinds(events: list[h2.events.Event]) -> list[type[Any]]:
    return [type(e) for e in events]


async def joined(
    a: Harness, b: Harness, idle_timeout: float | None = None
) -> tuple[Stream, Stream, asyncio.Task[RelayResult]]:
    sa = await a.open(start=False)
    sb = await b.open(start=False)
    sa.send_headers([(":status", "200")])
    sb.send_headers([(":status", "200")])
    task = asyncio.ensure_future(relay(sa, sb, idle_timeout=idle_timeout))
    await asyncio.sleep(0)
    await a.to_peer()
    await b.to_peer()
    return sa, sb, task


async def test_half_close_each_way_and_counts() -> None:
    a, b = Harness(), Harness()
    _, _, task = await joined(a, b)
    a.send(b"request", end=True)
    events = await b.to_peer()
    assert b.peer_data == b"request" and h2.events.StreamEnded in kinds(events)
    assert not task.done()  # the other direction is still open
    b.send(b"the answer", end=True)
    events = await a.to_peer()
    assert a.peer_data == b"the answer" and h2.events.StreamEnded in kinds(events)
    result = await task
    assert result == RelayResult(sent=7, received=10, ended_first=DOWNSTREAM, error=None)


async def test_upstream_ends_first_then_downstream_still_sends() -> None:
    a, b = Harness(), Harness()
    _, _, task = await joined(a, b)
    b.send(b"banner", end=True)
    await a.to_peer()
    assert a.peer_data == b"banner"
    a.send(b"late", end=True)
    await b.to_peer()
    assert b.peer_data == b"late"
    result = await task
    assert (result.sent, result.received, result.ended_first, result.error) == (4, 6, UPSTREAM, None)


@pytest.mark.parametrize("who", ["down", "up"])
async def test_a_reset_on_either_side_resets_the_other(who: str) -> None:
    a, b = Harness(), Harness()
    _, _, task = await joined(a, b)
    first, other = (a, b) if who == "down" else (b, a)
    first.peer.reset_stream(first.sid, H2ErrorCode.CONNECT_ERROR)
    first.to_server()
    result = await task
    assert isinstance(result.error, StreamReset) and result.error.code == H2ErrorCode.CONNECT_ERROR
    assert result.ended_first == (DOWNSTREAM if who == "down" else UPSTREAM)
    resets = [e for e in await other.to_peer() if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == H2ErrorCode.CANCEL


async def test_credit_waits_while_the_other_side_does_not_read() -> None:
    small = H2Settings.server(
        ping_interval=None, initial_stream_window=65_535, connection_window=1 << 20, max_send_buffer=16_384
    )
    a, b = Harness(small), Harness(small)
    _, sb, task = await joined(a, b)
    # b's peer never acknowledges: b's stream window (65,535) fills, then its send queue, then a's credit stops.
    sent = 0
    while a.peer.local_flow_control_window(a.sid) > 0:
        chunk = min(16_384, a.peer.local_flow_control_window(a.sid))
        a.send(bytes(chunk))
        sent += chunk
        await asyncio.sleep(0)
        b.h2_out.out.clear()  # bytes reach b's peer but it neither reads nor acknowledges them
        a.to_server()
        await a.to_peer()
    assert sent < 65_535 + 65_535 + 16_384 + 32_768  # one window each way plus one queue and one credit step
    assert sb.buffered > 16_384  # what b could not send is queued, and a's peer may send no more
    events = await a.to_peer()
    assert not any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == a.sid for e in events)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_idle_timeout_resets_both_streams() -> None:
    a, b = Harness(), Harness()
    _, _, task = await joined(a, b, idle_timeout=0.02)
    result = await task
    assert isinstance(result.error, IdleTimeout) and result.ended_first is None
    for h in (a, b):
        resets = [e for e in await h.to_peer() if isinstance(e, h2.events.StreamReset)]
        assert resets and resets[0].error_code == H2ErrorCode.CANCEL


async def test_many_streams_keep_both_connection_windows_open() -> None:
    settings = H2Settings.server(ping_interval=None, initial_stream_window=65_535, connection_window=65_535)
    a, b = Harness(settings), Harness(settings)
    for i in range(100):  # 100 x 1000 bytes each way through 64 KiB connection windows
        a.sid = b.sid = 1 + 2 * i
        _, _, task = await joined(a, b)
        a.send(b"x" * 1000, end=True)
        b.send(b"y" * 1000, end=True)  # h2 raises FlowControlError once a window is gone
        result = await task
        await a.to_peer()
        await b.to_peer()
        assert (result.sent, result.received, result.error) == (1000, 1000, None)


async def test_cancelling_the_relay_resets_both_streams() -> None:
    a, b = Harness(), Harness()
    _, _, task = await joined(a, b)
    a.send(b"in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for h in (a, b):
        resets = [e for e in await h.to_peer() if isinstance(e, h2.events.StreamReset)]
        assert resets and resets[0].error_code == H2ErrorCode.CANCEL


async def test_a_finished_bridge_is_freed_by_reference_counting() -> None:
    a, b = Harness(), Harness()
    sa = await a.open(start=False)
    sb = await b.open(start=False)
    sa.send_headers([(":status", "200")])
    sb.send_headers([(":status", "200")])
    gc.disable()
    try:
        bridge = StreamBridge(sa, sb)
        bridge.start()
        a.send(b"x", end=True)
        b.send(b"y", end=True)
        await a.to_peer()
        await b.to_peer()
        result = await bridge.wait()
        assert result.error is None
        gone = weakref.ref(bridge)
        del bridge
        assert gone() is None  # no cycle through its two directions
    finally:
        gc.enable()
