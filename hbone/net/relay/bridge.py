"""The relay's callback path between two tunnel streams (an H2R gateway, any stream <-> stream).

Each stream's DATA is delivered by callback (`Stream.attach`) and written to the other stream in the same
callback: no copy tasks. Semantics are the task relay's (RFC 9113 §8.5 on both sides):
- END_STREAM from one side becomes END_STREAM to the other after the queued bytes; the relay ends cleanly once
  both streams are closed;
- a reset (or a lost connection) on one side resets the other (CANCEL) and is the result's `error`;
- backpressure: received bytes are credited back to their sender only while the other stream's send queue is at
  most its `max_send_buffer`; above it the credit waits until that queue drained (`Stream.drained()`), so a
  slow receiver bounds what we hold to one stream window per direction. Credit goes back in steps of at most
  32 KiB (1/8 of a window) and whatever is owed at END_STREAM is returned (the connection window);
- idle timeout: no byte either way for `idle_timeout` seconds resets both streams (CANCEL).
"""

from __future__ import annotations

import asyncio
import weakref

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.relay.result import DOWNSTREAM, UPSTREAM, IdleTimeout, IdleWatch, RelayResult, Side, watch
from hbone.net.stream import Stream

_CREDIT_STEP = 32 * 1024


class _Direction:
    """One direction: `src`'s received bytes written to `dst` (a `StreamConsumer` of `src`)."""

    def __init__(self, bridge: StreamBridge, src: Stream, dst: Stream, side: Side) -> None:
        # A weak proxy: the bridge holds both directions, so a strong reference back would make every relayed
        # pair of streams a reference cycle that only the cycle collector frees. `relay()` keeps the bridge alive.
        self.bridge: StreamBridge = weakref.proxy(bridge)
        self.src, self.dst, self.side = src, dst, side
        settings = dst.connection.settings
        self.limit = settings.max_send_buffer
        self.step = min(_CREDIT_STEP, src.connection.settings.initial_stream_window // 8)
        self.moved = 0
        self.owed = 0  # written onward, not yet credited to src
        self.waiting = False  # dst's queue is over its limit: credit waits for it to drain
        self.eof = False
        self.closed = False

    def stream_data(self, data: bytes) -> None:
        try:
            self.dst.write(data)
        except HboneError as exc:  # dst broke or its sending side is closed
            self.bridge.fail(exc, self.other_side)
            return
        n = len(data)
        self.moved += n
        self.owed += n
        if self.waiting:
            return
        if self.dst.buffered > self.limit:
            fut = self.dst.drained()
            if fut is not None:
                self.waiting = True
                fut.add_done_callback(self._drained)
                return
        if self.owed >= self.step:
            self._credit()

    def stream_eof(self) -> None:
        self.eof = True
        self.bridge.ended(self.side)
        self._credit()  # everything the peer sends is here; uncredited bytes would leave the connection window
        try:
            self.dst.write_eof()
        except HboneError as exc:
            self.bridge.fail(exc, self.other_side)
            return
        self.bridge.maybe_done()

    def stream_closed(self) -> None:
        self.closed = True
        self.bridge.maybe_done()

    def stream_failed(self, exc: HboneError) -> None:
        self.bridge.fail(exc, self.side)

    @property
    def other_side(self) -> Side:
        return UPSTREAM if self.side == DOWNSTREAM else DOWNSTREAM

    def _drained(self, fut: asyncio.Future[None]) -> None:
        self.waiting = False
        try:
            if self.bridge.done.done():
                return
        except ReferenceError:  # the relay is over and gone
            return
        self._credit()

    def _credit(self) -> None:
        owed, self.owed = self.owed, 0
        if owed:
            self.src.credit(owed)


class StreamBridge:
    """Joins `down` and `up` (both tunnel streams that may carry data) by callbacks; `done` resolves with the
    `RelayResult` once both streams closed or one broke."""

    def __init__(self, down: Stream, up: Stream, idle_timeout: float | None = None) -> None:
        self.done: asyncio.Future[RelayResult] = asyncio.get_running_loop().create_future()
        self._sent = _Direction(self, down, up, DOWNSTREAM)
        self._received = _Direction(self, up, down, UPSTREAM)
        self._ended_first: Side | None = None
        self._idle: IdleWatch | None = watch(idle_timeout, self._moved, self._on_idle)
        self._idle_timeout = idle_timeout

    def start(self) -> None:
        """Attach both streams (bytes that arrived before are relayed first)."""
        for direction in (self._sent, self._received):
            if not self.done.done():
                direction.src.attach(direction)

    async def wait(self) -> RelayResult:
        """`done`; cancelling the caller resets both streams (CANCEL)."""
        try:
            return await self.done  # no shield: a cancelled caller cancels `done` with it
        except asyncio.CancelledError:
            if self.done.cancelled():
                if self._idle is not None:
                    self._idle.cancel()
                    self._idle = None
                self._sent.src.reset(H2ErrorCode.CANCEL)
                self._received.src.reset(H2ErrorCode.CANCEL)
            raise

    def ended(self, side: Side) -> None:
        if self._ended_first is None:
            self._ended_first = side

    def maybe_done(self) -> None:
        s, r = self._sent, self._received
        if self.done.done() or not (s.eof and r.eof and s.closed and r.closed):
            return
        late = next(
            (e for e in (s.src.error, r.src.error) if isinstance(e, StreamReset) and e.code != H2ErrorCode.NO_ERROR),
            None,
        )
        self._finish(late)

    def fail(self, exc: BaseException, side: Side | None) -> None:
        if self.done.done():
            return
        if side is not None:
            self.ended(side)
        self._finish(exc)  # first: the resets below call back into stream_failed, which must see us finished
        self._sent.src.reset(H2ErrorCode.CANCEL)
        self._received.src.reset(H2ErrorCode.CANCEL)

    def _finish(self, error: BaseException | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        result = RelayResult(self._sent.moved, self._received.moved, self._ended_first, error)
        self.done.set_result(result)

    def _moved(self) -> int:
        return self._sent.moved + self._received.moved

    def _on_idle(self) -> None:
        self._idle = None
        self.fail(IdleTimeout(self._idle_timeout or 0.0), None)
