"""The send side of one HTTP/2 connection: flow-controlled DATA, stream ends, resets, credit, coalesced writes.

`SendScheduler` moves each stream's queued bytes (its `Outbox`) into the engine only as far as the peer's windows
and the transport allow (RFC 9113 §5.2, §6.9); streams that must wait are kept in `blocked` and pumped again,
round-robin, when a WINDOW_UPDATE or SETTINGS arrives or the transport resumes. The engine's output is coalesced
into one `write` per loop iteration. It needs no transport to be tested: anything with `write`,
`get_write_buffer_size` and `is_closing` will do (`tests/unit/test_net_scheduler.py`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from hbone.errors import H2ErrorCode, HboneError, LimitExceeded, ProtocolError, StreamReset
from hbone.net.h2.api import Engine, HeaderList, StreamClosed
from hbone.net.h2.framebuffer import FRAME_HEADER

if TYPE_CHECKING:
    from hbone.net.settings import H2Settings
    from hbone.net.stream import Stream

# Write the engine's buffer out as soon as it holds one full-size DATA frame (65,527 + 9 bytes: four whole TLS
# records): with 256 KiB the sender used ~20% more CPU per GB (bigger TLS writes, ciphertext piling up;
# RESULTS-hbone.md round 4).
FLUSH_EARLY = 64 * 1024
FLUSH_NOW = 16 * 1024  # outside a read batch, an idle connection writes up to this much at once (latency)
_TLS_RECORD = 16 * 1024  # the most plaintext one TLS record carries (RFC 8446 §5.1)


def record_fit(limit: int) -> int:
    """The largest DATA payload within `limit` whose frame (9-byte header + payload) fills whole TLS records.

    A 64 KiB payload made a 65,545-byte frame: four full records and one of 9 bytes, which costs a record's
    decryption and bookkeeping on the receiver (asyncio's TLS read path: 0.62 vs 0.48 CPU-s per GB; RESULTS-hbone.md
    round 4). 65,527-byte payloads (16,375 at a peer's 16 KiB limit) make flushes of whole records.
    """
    header = FRAME_HEADER.size
    fitted = (limit + header) // _TLS_RECORD * _TLS_RECORD - header
    return fitted if fitted > 0 else limit


class Sink(Protocol):
    """Where the scheduler writes (an asyncio transport, or a test's fake)."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


class SchedulerHost(Protocol):
    """The stream bookkeeping the scheduler reports to (the connection)."""

    def fail_stream(self, stream: Stream, exc: HboneError) -> None:
        """Fail `stream` and forget it."""

    def end_sent(self, stream: Stream) -> None:
        """Our END_STREAM (or trailers) for `stream` went into the engine."""

    def check_outbound_headers(self, headers: HeaderList) -> None:
        """Raise LimitExceeded if the peer refuses a header list this large."""


class SendScheduler:
    """Pumps streams' outboxes into the engine and the engine's output into the sink (see the module docstring)."""

    __slots__ = (
        "_deferred",
        "_engine",
        "_flush_handle",
        "_frame_limit",
        "_host",
        "_loop",
        "_peer_frame",
        "_repump_handle",
        "_settings",
        "blocked",
        "closed",
        "paused",
        "receiving",
        "sink",
    )

    def __init__(
        self, engine: Engine, settings: H2Settings, loop: asyncio.AbstractEventLoop, host: SchedulerHost
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._loop = loop
        self._host = host
        self.sink: Sink | None = None  # None until connected and after the connection is lost
        #: Streams with queued data waiting for window or the sink, in round-robin order.
        self.blocked: dict[int, Stream] = {}
        self.paused = False  # the sink asked us to stop writing (pause_writing)
        self.receiving = False  # inside a read batch: its output goes out in one write at the end
        self.closed = False
        self._flush_handle: asyncio.Handle | None = None
        self._deferred = False  # the due flush is for deferred frames only: a DATA frame may still write at once
        self._repump_handle: asyncio.Handle | None = None  # a deferred short tail (`pump`)
        # The DATA payload limit (`record_fit`) for the peer's SETTINGS_MAX_FRAME_SIZE it was computed for: pump()
        # runs for every write, and the peer's limit changes only with its SETTINGS.
        self._peer_frame = 0
        self._frame_limit = 0

    # --- streams -------------------------------------------------------------------------------------------------

    def send_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        try:
            self._engine.send_headers(stream.stream_id, headers, end_stream)
        except ProtocolError as exc:
            self._send_failed(stream, exc)
            return
        if end_stream:
            self._host.end_sent(stream)
        self.schedule_flush(defer=True)

    def pump(self, stream: Stream) -> None:
        """Move a stream's queued bytes into the engine as far as windows allow, then its END_STREAM / trailers."""
        outbox = stream.outbox
        if stream.error is not None or outbox.ended:
            return
        sid = stream.stream_id
        if self.paused or self.sink is None:
            self.blocked[sid] = stream
            return
        engine = self._engine
        try:
            if outbox.size:
                peer_frame = engine.max_send_frame
                if peer_frame != self._peer_frame:
                    self._peer_frame = peer_frame
                    self._frame_limit = record_fit(min(self._settings.max_send_frame_size, peer_frame))
                limit = self._frame_limit
                window = engine.send_window(sid)
                full = False
                while outbox.size and window > 0:
                    n = min(outbox.size, window, limit)
                    if full and n == outbox.size < limit and not outbox.end_queued:
                        # The rest is less than a frame, right after a full one: the writer is streaming, so give
                        # it one loop iteration to add more before the rest goes out as a small frame of its own
                        # (64 KiB writes made a 65,527-byte frame and a 9-byte one each).
                        self._repump_soon()
                        break
                    full = n == limit
                    # One frame of n bytes, from as many queued writes as it takes (fewer, fuller frames).
                    engine.send_data(sid, outbox.take(n), n)
                    window -= n
                    if engine.pending() >= FLUSH_EARLY:
                        self.flush()
                        if self.paused:
                            # Keep the rest in the stream's queue: feeding a paused transport piled megabytes of
                            # ciphertext into its buffer, out of the CPU caches (RESULTS-hbone.md round 4).
                            break
                if outbox.waiters and outbox.size <= outbox.low:
                    outbox.wake()
                self.schedule_flush()
            if outbox.size:
                self.blocked.pop(sid, None)
                self.blocked[sid] = stream  # re-append: round-robin among blocked streams
                return
            self.blocked.pop(sid, None)
            if outbox.waiters:
                outbox.wake()
            if outbox.end_queued:
                defer = outbox.trailers is None  # a bare END_STREAM (a tunnel's FIN) can join the iteration's write
                if outbox.trailers is not None:
                    self._host.check_outbound_headers(outbox.trailers)
                    engine.send_headers(sid, outbox.trailers, True)
                else:
                    engine.end_stream(sid)
                self._host.end_sent(stream)
                self.schedule_flush(defer=defer)
        except LimitExceeded as exc:  # our own check of the trailers (a ProtocolError too: caught first)
            self.reset(sid, H2ErrorCode.INTERNAL_ERROR)
            self._host.fail_stream(stream, exc)
        except ProtocolError as exc:
            self._send_failed(stream, exc)

    def _repump_soon(self) -> None:
        if self._repump_handle is None:
            self._repump_handle = self._loop.call_soon(self._repump)

    def _repump(self) -> None:
        self._repump_handle = None
        self.pump_blocked()
        self.flush()  # the deferred tail has waited one iteration already

    def pump_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.paused:
                break
            self.pump(stream)

    def _send_failed(self, stream: Stream, exc: ProtocolError) -> None:
        """The engine refused a send on this stream. Never fatal for the connection.

        docs/performance.md pitfall: the engine processes a whole read batch before we see its events, so a
        RST_STREAM later in the batch may already have closed the stream we are sending on. Its StreamReset event
        (with the real code) is still to come; settle the stream on the next loop iteration if nothing else did.
        """
        self.blocked.pop(stream.stream_id, None)
        stream.outbox.discard()
        if isinstance(exc, StreamClosed):
            self._loop.call_soon(self._settle_closed, stream)
        else:
            self.reset(stream.stream_id, H2ErrorCode.INTERNAL_ERROR)
            self._host.fail_stream(stream, StreamReset(H2ErrorCode.INTERNAL_ERROR, f"h2 refused to send: {exc}"))

    def _settle_closed(self, stream: Stream) -> None:
        if stream.error is None and not stream.closed:
            self._host.fail_stream(stream, StreamReset(H2ErrorCode.STREAM_CLOSED, "stream closed while sending"))

    def reset(self, sid: int, code: int) -> None:
        """RST_STREAM(code) on `sid` (a no-op for a stream the engine already closed)."""
        self._engine.reset_stream(sid, code)
        self.schedule_flush()

    def credit(self, sid: int, n: int) -> None:
        """Credit `n` consumed bytes to the stream and connection windows (RFC 9113 §6.9)."""
        if n <= 0 or self.closed:
            return
        self._engine.credit(sid, n)
        self.schedule_flush()

    # --- the sink ------------------------------------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.pump_blocked()
        self.flush()

    def schedule_flush(self, *, defer: bool = False) -> None:
        """Coalesce the frames of one loop iteration into a single write. But the first small write of an
        iteration on an idle connection goes out now: waiting a loop turn added to every hop's latency (RESULTS).
        `defer`: frames that open or close a stream (HEADERS, a bare END_STREAM) wait for the iteration's write
        anyway: with many tunnels opening and closing, writing each one's first frame at once made ~1.3 TLS writes
        per tunnel in `hbone forward` (RESULTS-hbone.md round 6); a DATA frame queued in the same iteration
        still goes out at once, taking them along."""
        if self.closed or self.receiving:
            return  # the read batch writes at its end
        engine = self._engine
        pending = engine.pending()
        if not pending:
            return
        handle = self._flush_handle
        if handle is not None and (defer or not self._deferred):
            return  # due at the end of this iteration (and written once at once already, unless only deferred)
        sink = self.sink
        if not defer and sink is not None and pending <= FLUSH_NOW and not sink.get_write_buffer_size():
            data = engine.take_output()  # with any deferred frames
            if not sink.is_closing():
                sink.write(data)
        if handle is None:
            # Also after a write at once: the rest of this iteration's frames then wait for this one flush.
            self._flush_handle = self._loop.call_soon(self.flush)
        self._deferred = defer

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._engine.pending():
            return  # most flushes of a quiet connection: no new buffer, no write
        data = self._engine.take_output()
        sink = self.sink
        if data and sink is not None and not sink.is_closing():
            sink.write(data)

    def stop(self) -> None:
        """The connection is torn down: no more pumping, flushing or credit."""
        self.closed = True
        for handle in (self._flush_handle, self._repump_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._repump_handle = None
        self.blocked.clear()
