"""relay() on the task path, with in-memory ends (no sockets): half-close each way, resets each way, backpressure
with a slow reader, the idle timeout (a fake clock for the watch itself), cancellation and the result's fields."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from hbone.errors import H2ErrorCode, StreamReset
from hbone.net.relay import DOWNSTREAM, UPSTREAM, IdleTimeout, RelayResult, TcpPipe, relay
from hbone.net.relay.result import IdleWatch

pytestmark = pytest.mark.timeout(10)
EOF_ = b""


class MemEnd:
    """One end of a relay: `feed()` is what its peer sends us (read() hands it to the relay), `out` is what the
    relay wrote to it; `limit` bounds `out` like a transport's buffer (drain() waits while above it)."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self._in: deque[bytes | BaseException] = deque()
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = asyncio.Event()
        self.limit = limit
        self.out = bytearray()
        self.eof_written = False
        self.reset_code: int | None = None
        self._eof_read = False

    # what the far peer does
    def feed(self, item: bytes | BaseException) -> None:
        self._in.append(item)
        self._readable.set()

    def take(self) -> bytes:
        """The peer reads everything the relay wrote (unblocks drain())."""
        data, self.out = bytes(self.out), bytearray()
        self._drained.set()
        return data

    # the End protocol
    async def read(self, n: int = -1) -> bytes:
        while not self._in:
            self._readable.clear()
            await self._readable.wait()
        item = self._in.popleft()
        if isinstance(item, BaseException):
            raise item
        if not item:
            self._eof_read = True
            self._maybe_closed()
        return item

    def write(self, data: bytes) -> None:
        assert not self.eof_written and self.reset_code is None
        self.out += data
        if len(self.out) > self.limit:
            self._drained.clear()

    async def drain(self) -> None:
        await self._drained.wait()

    def write_eof(self) -> None:
        self.eof_written = True
        self._maybe_closed()

    def reset(self, code: int = H2ErrorCode.CANCEL) -> None:
        if self.reset_code is None:
            self.reset_code = code
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _maybe_closed(self) -> None:
        """Closed once both directions ended (like a stream after END_STREAM each way)."""
        if self.eof_written and self._eof_read:
            self._closed.set()


class NeverClosing(MemEnd):
    """A peer that never finishes closing (its stream never reaches `closed`)."""

    def _maybe_closed(self) -> None:
        pass


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def start(down: MemEnd, up: MemEnd, **kw: Any) -> asyncio.Task[RelayResult]:
    return asyncio.ensure_future(relay(down, up, **kw))


async def test_downstream_half_closes_first_then_upstream() -> None:
    down, up = MemEnd(), MemEnd()
    task = start(down, up)
    down.feed(b"hello")
    down.feed(EOF_)
    await turns()
    assert up.take() == b"hello" and up.eof_written and not down.eof_written  # only that direction ended
    up.feed(b"world!")  # the other direction still flows after the half-close
    await turns()
    assert down.take() == b"world!"
    up.feed(EOF_)
    result = await task
    assert down.eof_written
    assert result == RelayResult(sent=5, received=6, ended_first=DOWNSTREAM, error=None)
    assert result.ok and result.outcome == "ok" and down.reset_code is None and up.reset_code is None


async def test_upstream_half_closes_first() -> None:
    down, up = MemEnd(), MemEnd()
    task = start(down, up)
    up.feed(b"banner")
    up.feed(EOF_)
    await turns()
    assert down.take() == b"banner" and down.eof_written and not up.eof_written
    down.feed(b"late request")
    down.feed(EOF_)
    result = await task
    assert up.take() == b"late request"
    assert (result.sent, result.received, result.ended_first, result.error) == (12, 6, UPSTREAM, None)


async def test_downstream_reset_resets_upstream_with_cancel() -> None:
    down, up = MemEnd(), MemEnd()
    task = start(down, up)
    down.feed(b"abc")
    down.feed(StreamReset(H2ErrorCode.CANCEL, "peer reset"))
    result = await task
    assert isinstance(result.error, StreamReset) and result.ended_first == DOWNSTREAM and result.sent == 3
    assert up.reset_code == H2ErrorCode.CANCEL and down.reset_code == H2ErrorCode.CANCEL  # our own error: CANCEL
    assert result.outcome.startswith("broken: ") and not result.ok


async def test_upstream_transport_error_resets_downstream_with_connect_error() -> None:
    down, up = MemEnd(), MemEnd()
    task = start(down, up)
    up.feed(b"xy")
    up.feed(ConnectionResetError(104, "Connection reset by peer"))
    result = await task
    assert isinstance(result.error, ConnectionResetError) and result.ended_first == UPSTREAM
    assert result.received == 2 and down.take() == b"xy"
    assert down.reset_code == H2ErrorCode.CONNECT_ERROR  # RFC 9113 §8.5: a TCP reset becomes CONNECT_ERROR


async def test_a_failing_write_is_blamed_on_the_side_written_to() -> None:
    class Broken(MemEnd):
        def write(self, data: bytes) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    down, up = MemEnd(), Broken()
    task = start(down, up)
    down.feed(b"data")
    result = await task
    assert isinstance(result.error, BrokenPipeError) and result.ended_first == UPSTREAM and result.sent == 0


async def test_slow_reader_stops_reading_from_the_other_end() -> None:
    down, up = MemEnd(), MemEnd(limit=10)
    task = start(down, up)
    for _ in range(50):
        down.feed(b"x" * 8)
    await turns(20)
    # The upstream peer reads nothing: at most one chunk beyond its buffer limit is taken from the downstream.
    assert len(up.out) <= 10 + 8 and len(down._in) >= 47
    got = b""
    while len(got) < 400:
        got += up.take()
        await turns(2)
    down.feed(EOF_)
    up.feed(EOF_)
    result = await task
    assert got == b"x" * 400 and result.sent == 400 and result.error is None


async def test_idle_timeout_resets_both_ends() -> None:
    down, up = MemEnd(), MemEnd()
    result = await relay(down, up, idle_timeout=0.02)  # nothing moves: the watch ends it
    assert isinstance(result.error, IdleTimeout) and result.ended_first is None
    assert down.reset_code == up.reset_code == H2ErrorCode.CANCEL
    assert "idle timeout" in result.outcome


async def test_idle_timeout_also_bounds_a_close_that_never_completes() -> None:
    down, up = NeverClosing(), NeverClosing()
    task = start(down, up, idle_timeout=0.02)
    down.feed(EOF_)
    up.feed(EOF_)
    result = await task
    assert isinstance(result.error, IdleTimeout) and result.ended_first == DOWNSTREAM


async def test_cancelling_the_relay_resets_both_ends() -> None:
    down, up = MemEnd(), MemEnd()
    task = start(down, up)
    await turns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert down.reset_code == up.reset_code == H2ErrorCode.CANCEL


async def test_a_tcp_pipe_relays_to_a_tunnel_stream_only() -> None:
    with pytest.raises(TypeError):
        await relay(TcpPipe(), MemEnd())


# --- the idle watch on a fake clock ----------------------------------------------------------------------------


class FakeLoop:
    """time() and call_later() only: advance() runs what is due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Callable[[], None]) -> Any:
        entry = (self.now + delay, cb)
        self.timers.append(entry)
        loop = self

        class Handle:
            def cancel(self) -> None:
                if entry in loop.timers:
                    loop.timers.remove(entry)

        return Handle()

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while True:
            due = sorted(t for t in self.timers if t[0] <= end)
            if not due:
                break
            self.timers.remove(due[0])
            self.now = due[0][0]
            due[0][1]()
        self.now = end


def test_idle_watch_fires_within_a_quarter_after_the_last_byte_and_traffic_keeps_it_alive() -> None:
    loop = FakeLoop()
    moved = [0]
    fired: list[float] = []
    IdleWatch(100.0, lambda: moved[0], lambda: fired.append(loop.now), loop)  # type: ignore[arg-type]
    for _ in range(20):  # a byte every 60 s for 20 minutes: never idle for 100 s
        loop.advance(60.0)
        moved[0] += 1
    assert fired == []
    last_byte = loop.now
    loop.advance(1000.0)
    assert len(fired) == 1 and 100.0 <= fired[0] - last_byte <= 125.0
    assert loop.timers == []  # it stops after firing


def test_idle_watch_cancel_stops_the_timer() -> None:
    loop = FakeLoop()
    fired: list[float] = []
    watch = IdleWatch(10.0, lambda: 0, lambda: fired.append(loop.now), loop)  # type: ignore[arg-type]
    watch.cancel()
    loop.advance(100.0)
    assert fired == [] and loop.timers == []


def test_watches_with_one_timeout_share_one_timer() -> None:
    loop = FakeLoop()
    moved = [0]
    fired: list[str] = []
    busy = IdleWatch(100.0, lambda: moved[0], lambda: fired.append("busy"), loop)  # type: ignore[arg-type]
    quiet = IdleWatch(100.0, lambda: 0, lambda: fired.append("quiet"), loop)  # type: ignore[arg-type]
    other = IdleWatch(10.0, lambda: 0, lambda: fired.append("other"), loop)  # type: ignore[arg-type]
    assert len(loop.timers) == 2  # one per timeout, not one per relay
    for _ in range(10):
        loop.advance(25.0)
        moved[0] += 1
    assert fired == ["other", "quiet"]  # each on its own schedule; the busy one is still watched
    assert len(loop.timers) == 1
    busy.cancel()
    assert loop.timers == []  # the last watch gone: the shared timer stops
    other.cancel()  # already fired: a no-op
    quiet.cancel()
