"""The send side of one HTTP/2 connection: flow-controlled DATA, stream ends and resets, window credit, writes.

`ConnectionSending` is a mixin of `hbone.net.connection.H2Connection`. Each stream's queued bytes go into h2 only
as far as the peer's windows and the transport allow (RFC 9113 §5.2, §6.9); streams that must wait are kept in
`_blocked` and pumped again, round-robin, when a WINDOW_UPDATE or SETTINGS arrives or the transport resumes.
The frames h2 produces are coalesced into one `transport.write` per loop iteration.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from hbone.errors import H2ErrorCode, HboneError, LimitExceeded, ProtocolError, StreamReset
from hbone.net.h2.api import StreamClosed
from hbone.net.h2.framebuffer import FRAME_HEADER
from hbone.net.lifecycle import code_name
from hbone.net.stream import HeaderList, Stream

if TYPE_CHECKING:
    from hbone.net.h2.api import Engine
    from hbone.net.settings import H2Settings

# Write h2's buffer out as soon as it holds one full-size DATA frame (65,527 + 9 bytes: four whole TLS records): with
# 256 KiB the sender used ~20% more CPU per GB (bigger TLS writes, ciphertext piling up; RESULTS-hbone.md round 4).
_FLUSH_EARLY = 64 * 1024
_FLUSH_NOW = 16 * 1024  # outside a read batch, an idle connection writes up to this much at once (latency)


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


def _take(queue: deque[bytes | memoryview], n: int) -> list[bytes | memoryview]:
    """The first `n` bytes of `queue` (which holds at least that many) as a list of buffers, removed from it; a
    write split across frames is cut with memoryview slices (no quadratic re-copying of its remainder)."""
    pieces: list[bytes | memoryview] = []
    while n:
        chunk = queue[0]
        size = len(chunk)
        if size <= n:
            pieces.append(queue.popleft())
            n -= size
        else:
            view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
            pieces.append(view[:n])
            queue[0] = view[n:]
            n = 0
    return pieces


class ConnectionSending:
    """Sending, resets, receive-window credit and transport writes for `H2Connection` (a mixin)."""

    # --- provided by the driver ----------------------------------------------------------------------------------
    _loop: asyncio.AbstractEventLoop
    settings: H2Settings
    _engine: Engine
    _transport: asyncio.Transport | None
    _blocked: dict[int, Stream]
    _write_paused: bool
    _flush_handle: asyncio.Handle | None
    _repump_handle: asyncio.Handle | None
    _receiving: bool
    _closed: bool
    _pending: dict[int, asyncio.Task[None]]

    if TYPE_CHECKING:  # declarations only: real stubs here would shadow the other mixins' methods in the MRO

        def _check_outbound_size(self, headers: HeaderList) -> None: ...
        def _maybe_finish(self, stream: Stream) -> None: ...
        def _fail_stream(self, stream: Stream, exc: HboneError) -> None: ...

    def _send_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        if not stream.local:
            self._pending.pop(stream.stream_id, None)  # answered: a reset from now on is not a premature one
        try:
            self._engine.send_headers(stream.stream_id, headers, end_stream)
        except ProtocolError as exc:
            self._send_failed(stream, exc)
            return
        if end_stream:
            self._local_end(stream)
        self._schedule_flush()

    def _pump(self, stream: Stream) -> None:
        """Move a stream's queued bytes into h2 as far as windows allow, then its END_STREAM / trailers."""
        if stream._error is not None or stream._local_closed:
            return
        sid = stream.stream_id
        if self._write_paused or self._transport is None:
            self._blocked[sid] = stream
            return
        engine = self._engine
        queue = stream._send
        try:
            if queue:
                limit = record_fit(min(self.settings.max_send_frame_size, engine.max_send_frame))
                window = engine.send_window(sid)
                full = False
                while queue and window > 0:
                    n = min(stream._send_len, window, limit)
                    if full and n == stream._send_len < limit and not stream._end_queued:
                        # The rest is less than a frame, right after a full one: the writer is streaming, so give
                        # it one loop iteration to add more before the rest goes out as a small frame of its own
                        # (64 KiB writes made a 65,527-byte frame and a 9-byte one each).
                        self._repump_soon()
                        break
                    full = n == limit
                    # One frame of n bytes, from as many queued writes as it takes (fewer, fuller frames).
                    engine.send_data(sid, _take(queue, n), n)
                    window -= n
                    stream._send_len -= n
                    stream.bytes_out += n
                    if engine.pending() >= _FLUSH_EARLY:
                        self._flush()
                        if self._write_paused:
                            # Keep the rest in the stream's queue: feeding a paused transport piled megabytes of
                            # ciphertext into its buffer, out of the CPU caches (RESULTS-hbone.md round 4).
                            break
                if stream._drain_waiters and stream._send_len <= self.settings.max_send_buffer // 2:
                    stream._wake_drainers()
                self._schedule_flush()
            if queue:
                self._blocked.pop(sid, None)
                self._blocked[sid] = stream  # re-append: round-robin among blocked streams
                return
            self._blocked.pop(sid, None)
            if stream._drain_waiters:
                stream._wake_drainers()
            if stream._end_queued:
                if stream._trailers_out is not None:
                    self._check_outbound_size(stream._trailers_out)
                    engine.send_headers(sid, stream._trailers_out, True)
                else:
                    engine.end_stream(sid)
                self._local_end(stream)
                self._schedule_flush()
        except LimitExceeded as exc:  # our own check of the trailers (a ProtocolError too: caught first)
            self._h2_reset(sid, H2ErrorCode.INTERNAL_ERROR)
            self._fail_stream(stream, exc)
        except ProtocolError as exc:
            self._send_failed(stream, exc)

    def _repump_soon(self) -> None:
        if self._repump_handle is None:
            self._repump_handle = self._loop.call_soon(self._repump)

    def _repump(self) -> None:
        self._repump_handle = None
        self._pump_blocked()
        self._flush()  # the deferred tail has waited one iteration already

    def _pump_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._write_paused:
                break
            self._pump(stream)

    def _send_failed(self, stream: Stream, exc: ProtocolError) -> None:
        """The engine refused a send on this stream. Never fatal for the connection.

        docs/performance.md pitfall: the engine processes a whole read batch before we see its events, so a RST_STREAM
        later in the batch may already have closed the stream we are sending on. Its StreamReset event (with
        the real code) is still to come; settle the stream on the next loop iteration if nothing else did.
        """
        self._blocked.pop(stream.stream_id, None)
        stream._send.clear()
        stream._send_len = 0
        if isinstance(exc, StreamClosed):
            self._loop.call_soon(self._settle_closed, stream)
        else:
            self._h2_reset(stream.stream_id, H2ErrorCode.INTERNAL_ERROR)
            self._fail_stream(stream, StreamReset(H2ErrorCode.INTERNAL_ERROR, f"h2 refused to send: {exc}"))

    def _stop_sending(self, stream: Stream) -> None:
        stream._send.clear()
        stream._send_len = 0
        stream._end_queued = True
        stream._on_local_end()
        stream._wake_drainers()
        self._maybe_finish(stream)

    def _settle_closed(self, stream: Stream) -> None:
        if stream._error is None and not stream.closed:
            self._fail_stream(stream, StreamReset(H2ErrorCode.STREAM_CLOSED, "stream closed while sending"))

    def _local_end(self, stream: Stream) -> None:
        stream._on_local_end()
        if stream._reset_after_end and not stream._recv_eof:
            self._h2_reset(stream.stream_id, H2ErrorCode.NO_ERROR)
            self._fail_stream(stream, StreamReset(H2ErrorCode.NO_ERROR, "response complete; request not read"))
            return
        self._maybe_finish(stream)

    def _reset_stream(self, stream: Stream, code: int) -> None:
        self._h2_reset(stream.stream_id, code)
        self._fail_stream(stream, StreamReset(code, f"stream reset locally ({code_name(code)})"))
        self._schedule_flush()

    def _h2_reset(self, sid: int, code: int) -> None:
        self._engine.reset_stream(sid, code)  # a no-op on a stream already closed
        self._schedule_flush()

    # --- receive-side credit -------------------------------------------------------------------------------------

    def _ack_id(self, sid: int, n: int) -> None:
        """Credit `n` consumed bytes to the stream and connection windows (RFC 9113 §6.9)."""
        if n <= 0 or self._closed:
            return
        self._engine.credit(sid, n)
        self._schedule_flush()

    # --- writing to the transport --------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # Coalesce the frames of one loop iteration into a single transport.write. But the first small write of an
        # iteration on an idle connection goes out now: waiting a loop turn added to every hop's latency (RESULTS).
        if self._flush_handle is not None or self._closed or self._receiving or not self._engine.pending():
            return  # already due; or buffer_updated writes at its end; or nothing to write
        idle = self._transport is not None and not self._transport.get_write_buffer_size()
        if idle and self._engine.pending() <= _FLUSH_NOW:
            self._flush()
        self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._engine.pending():
            return  # most flushes of a quiet connection: no new buffer, no write
        data = self._engine.take_output()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
