"""The life and death of one HTTP/2 connection: PING keepalive, GOAWAY, graceful drain, close and teardown.

`ConnectionLifecycle` is a mixin of `hbone.net.connection.H2Connection`; it owns the connection's end states and
timers, while the driver owns framing, streams and flow control. The split keeps each module readable; the
public API (`drain`, `close`, `abort`, `wait_closed`, `closed`, `goaway_*`) is reached through `H2Connection`.

- Keepalive (ztunnel behaviour): PING every `ping_interval`; no ACK within `ping_timeout` drops the connection
  without a graceful close, because a peer that does not read would make a graceful close wait forever.
- Drain (RFC 9113 §6.8): GOAWAY with the highest stream id we saw, let those streams finish until a deadline,
  reset what is left, close.
- A GOAWAY from the peer stops new streams here, fails our streams above its last_stream_id as refused (safe to
  retry elsewhere), and closes the connection once the remaining streams are done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, ProtocolError
from hbone.net.h2.api import GoAwayReceived, PingAcked
from hbone.net.stream import StreamRefused

if TYPE_CHECKING:
    from hbone.net.h2.api import Engine
    from hbone.net.settings import H2Settings
    from hbone.net.stream import Stream

# The driver's logger name, so log filters and tests keep working after the split.
log = logging.getLogger("hbone.net.connection")
_LINGER = 1.0  # seconds input is discarded after an error GOAWAY before the close (`_linger_close`)


class _LogLimiter:
    """Per-process budget for per-connection error logs, so a flood of bad peers cannot flood stderr."""

    def __init__(self, per_window: int = 20, window: float = 10.0) -> None:
        self.per_window, self.window = per_window, window
        self.start, self.count, self.suppressed = 0.0, 0, 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.start > self.window:
            if self.suppressed:
                log.warning("suppressed %d HTTP/2 connection error logs", self.suppressed)
            self.start, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.per_window:
            self.suppressed += 1
            return False
        return True


_limiter = _LogLimiter()


def _end_linger(transport: asyncio.Transport) -> None:
    # A peer that did not read our GOAWAY in time is not reading at all: a close() would wait for it forever.
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def code_name(code: int) -> str:
    """An HTTP/2 error code's name for messages (hex when unknown)."""
    try:
        return H2ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


class ConnectionLifecycle:
    """Keepalive, GOAWAY, drain and close for `H2Connection` (a mixin: it works on the driver's state)."""

    # --- provided by the driver ----------------------------------------------------------------------------------
    _loop: asyncio.AbstractEventLoop
    settings: H2Settings
    _engine: Engine
    _transport: asyncio.Transport | None
    _streams: dict[int, Stream]
    _blocked: dict[int, Stream]
    _tasks: set[asyncio.Task[None]]
    _pending: dict[int, asyncio.Task[None]]
    _capacity_waiters: deque[asyncio.Future[None]]
    _flush_handle: asyncio.Handle | None
    _repump_handle: asyncio.Handle | None
    _registry: set[Any] | None
    _remote_settings_seen: bool

    def _flush(self) -> None:
        raise NotImplementedError

    def _h2_reset(self, sid: int, code: int) -> None:
        raise NotImplementedError

    def _fail_stream(self, stream: Stream, exc: HboneError) -> None:
        raise NotImplementedError

    def _trip(self, limit: str, detail: str) -> None:
        raise NotImplementedError

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default) if self._transport is not None else default

    # --- state ---------------------------------------------------------------------------------------------------

    def _init_lifecycle(self) -> None:
        self._closing = False  # no new streams: GOAWAY sent or received, or closing
        self._closed = False  # torn down: every stream failed
        self._close_exc: HboneError | None = None
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._idle_fut: asyncio.Future[None] | None = None
        self._first_bytes: asyncio.Future[None] = self._loop.create_future()
        self.goaway_sent_last_id: int | None = None
        #: (error_code, last_stream_id) of a GOAWAY received from the peer.
        self.goaway_received: tuple[int, int] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._ping_seq = 0
        self._errors_logged = 0
        self._watch_timer: asyncio.TimerHandle | None = None  # server: preface, then idle deadline
        self._idle_since = 0.0  # loop time when the last stream ended

    @property
    def is_usable(self) -> bool:
        """May new streams be opened? False once GOAWAY was sent or received or the connection closed."""
        return self._transport is not None and not self._closing and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        """Wait until the transport is gone."""
        await asyncio.shield(self._closed_fut)

    def _raise_if_unusable(self) -> None:
        if self._closed or self._transport is None:
            raise self._close_exc or ConnectionLost("HTTP/2 connection is closed")
        if self._closing:
            raise ConnectionLost("HTTP/2 connection is going away (GOAWAY); open a new one")

    # --- transport end (asyncio.BufferedProtocol) ---------------------------------------------------------------

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost fails the streams

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_exc or ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by peer")
        self._teardown(reason)
        self._transport = None
        if self._registry is not None:
            self._registry.discard(self)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    # --- GOAWAY ----------------------------------------------------------------------------------------------

    def _on_goaway(self, event: GoAwayReceived) -> None:
        code, last = event.code, event.last_stream_id
        self.goaway_received = (code, last)
        self._closing = True
        for sid, stream in list(self._streams.items()):
            if stream.local and sid > last:  # RFC 9113 §6.8: not processed by the peer, safe to retry
                self._h2_reset(sid, H2ErrorCode.CANCEL)
                self._fail_stream(stream, StreamRefused(f"stream {sid} above GOAWAY last_stream_id {last}"))
        self._fail_capacity_waiters(ConnectionLost("peer sent GOAWAY"))
        if code != H2ErrorCode.NO_ERROR:
            detail = event.debug
            self._abort(ConnectionLost(f"peer sent GOAWAY {code_name(code)} {detail!r}"), None)

    def _send_goaway(self, code: int) -> None:
        self._closing = True
        self._fail_capacity_waiters(ConnectionLost("connection is going away"))
        if self.goaway_sent_last_id is not None or self._transport is None:
            return
        last = self._engine.highest_inbound_stream_id
        try:
            self._engine.goaway(code, last)
        except ProtocolError:
            return
        self.goaway_sent_last_id = last

    def _maybe_idle(self) -> None:
        """After GOAWAY, the last stream finishing ends a drain() wait, or closes a connection the peer left."""
        if not self._closing or self._streams or self._closed:
            return
        if self._idle_fut is not None:
            if not self._idle_fut.done():
                self._idle_fut.set_result(None)
        elif self.goaway_received is not None:
            self._loop.call_soon(self._close_now, ConnectionLost("connection closed after peer's GOAWAY"))

    # --- shutdown -----------------------------------------------------------------------------------------------

    async def drain(self, deadline: float | None = None) -> None:
        """Graceful shutdown (RFC 9113 §6.8): GOAWAY now, let running streams finish for `deadline` seconds
        (default `settings.drain_deadline`), then reset what is left and close."""
        if self._closed:
            await self.wait_closed()
            return
        timeout = self.settings.drain_deadline if deadline is None else deadline
        self._send_goaway(H2ErrorCode.NO_ERROR)
        self._flush()
        if self._streams:
            self._idle_fut = self._loop.create_future()
            await asyncio.wait([self._idle_fut], timeout=timeout)
        for stream in list(self._streams.values()):
            stream.reset(H2ErrorCode.CANCEL)
        await self.close()

    async def close(self) -> None:
        """Close now: GOAWAY, fail every stream with ConnectionLost, close the transport and wait for it."""
        if not self._closed and self._transport is not None:
            if not self._first_bytes.done() and self._transport.get_extra_info("ssl_object") is not None:
                # docs/performance.md: closing a TLS 1.3 client right after the handshake can race the server's
                # SETTINGS / session tickets and stall; wait (briefly) for the peer's first bytes.
                await asyncio.wait([self._first_bytes], timeout=1.0)
            self._close_now(ConnectionLost("connection closed locally"))
        try:
            await asyncio.wait_for(self.wait_closed(), 5.0)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once (no GOAWAY); streams fail with ConnectionLost."""
        self._teardown(ConnectionLost("connection aborted locally"))
        if self._transport is not None:
            self._transport.abort()

    def _close_now(self, exc: HboneError) -> None:
        if self._closed or self._transport is None:
            return
        self._send_goaway(H2ErrorCode.NO_ERROR)
        self._flush()
        self._teardown(exc)
        self._transport.close()

    def _abort(self, exc: HboneError, code: int | None) -> None:
        """Fatal error: GOAWAY(code) if given, fail everything, close the transport after flushing."""
        if self._closed:
            return
        if code is not None:
            self._send_goaway(code)
        self._flush()
        self._close_exc = exc
        self._teardown(exc)
        if self._transport is not None:
            if self.goaway_sent_last_id is not None:
                self._linger_close(self._transport)
            else:
                self._transport.close()

    def _linger_close(self, transport: asyncio.Transport) -> None:
        """Close after an error GOAWAY so that the peer gets to read it (RFC 9113 §5.4.1).

        Closing a socket whose peer is still sending (unread input) makes the kernel reset the connection and drop
        what we had not sent yet: the GOAWAY of a flood or protocol error. So send FIN where the transport can,
        keep reading (and discarding: the connection is closed for us) for `_LINGER` seconds, then close.
        """
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            pass
        try:
            transport.resume_reading()
        except (NotImplementedError, RuntimeError):
            pass
        self._loop.call_later(_LINGER, _end_linger, transport)

    def _protocol_error(self, exc: ProtocolError) -> None:
        code = int(exc.h2_code)
        self._log_error("HTTP/2 protocol error from peer", exc)
        # The engine has queued the GOAWAY (hbone.net.h2.api): no new streams, and linger so the peer reads it.
        self._closing = True
        self.goaway_sent_last_id = self._engine.highest_inbound_stream_id
        self._abort(ConnectionLost(f"HTTP/2 protocol error ({code_name(code)}): {exc}"), None)

    def _teardown(self, exc: HboneError) -> None:
        """Fail every stream, waiter, timer and handler task; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for handle in (
            self._ping_timer,
            self._ping_deadline,
            self._flush_handle,
            self._repump_handle,
            self._watch_timer,
        ):
            if handle is not None:
                handle.cancel()
        self._ping_timer = self._ping_deadline = self._flush_handle = self._repump_handle = self._watch_timer = None
        for stream in list(self._streams.values()):
            stream._fail(exc, keep_received=True)
        self._streams.clear()
        self._blocked.clear()
        self._fail_capacity_waiters(exc)
        if self._idle_fut is not None and not self._idle_fut.done():
            self._idle_fut.set_result(None)
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()

    def _fail_capacity_waiters(self, exc: HboneError) -> None:
        while self._capacity_waiters:
            fut = self._capacity_waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the waiter may have been cancelled meanwhile

    # --- keepalive ---------------------------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        interval = self.settings.ping_interval
        if interval is not None and not self._closed:
            self._ping_timer = self._loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self._closed:
            return
        self._ping_seq += 1
        self._ping_payload = self._ping_seq.to_bytes(8, "big")
        try:
            self._engine.ping(self._ping_payload)
        except ProtocolError:
            return
        self._flush()
        self._ping_deadline = self._loop.call_later(self.settings.ping_timeout, self._ping_timed_out)

    def _on_ping_ack(self, event: PingAcked) -> None:
        if event.opaque != self._ping_payload:
            return
        self._ping_payload = None
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
        self._arm_ping()

    def _ping_timed_out(self) -> None:
        self._ping_deadline = None
        exc = ConnectionLost(f"keepalive: no PING ACK within {self.settings.ping_timeout}s")
        self._log_error("dropping HTTP/2 connection", exc)
        self._close_exc = exc
        self._teardown(exc)
        if self._transport is not None:
            self._transport.abort()  # the peer is not reading: a graceful close could wait forever

    # --- preface and idle deadlines (server side) -----------------------------------------------------------------

    def _arm_watch(self) -> None:
        """Server connections: the peer's preface + SETTINGS must arrive within `preface_timeout`; afterwards a
        connection without streams for `idle_timeout` is closed (GOAWAY NO_ERROR)."""
        s = self.settings
        self._idle_since = self._loop.time()
        if s.preface_timeout is not None:
            self._watch_timer = self._loop.call_later(s.preface_timeout, self._preface_deadline)
        elif s.idle_timeout is not None:
            self._watch_timer = self._loop.call_later(s.idle_timeout, self._idle_deadline)

    def _preface_deadline(self) -> None:
        self._watch_timer = None
        if self._closed:
            return
        if not self._remote_settings_seen:
            self._trip("preface_timeout", f"no HTTP/2 preface within {self.settings.preface_timeout}s")
            self._abort(ConnectionLost("no HTTP/2 preface in time"), H2ErrorCode.SETTINGS_TIMEOUT)
            return
        idle = self.settings.idle_timeout
        if idle is not None:
            self._watch_timer = self._loop.call_later(max(0.0, idle - self._idle_for()), self._idle_deadline)

    def _idle_for(self) -> float:
        return 0.0 if self._streams else self._loop.time() - self._idle_since

    def _idle_deadline(self) -> None:
        self._watch_timer = None
        idle = self.settings.idle_timeout
        if self._closed or idle is None:
            return
        quiet = self._idle_for()
        if quiet >= idle:
            self._trip("idle_timeout", f"no stream for {idle}s")
            self._close_now(ConnectionLost(f"idle for {idle}s"))
            return
        self._watch_timer = self._loop.call_later(idle - quiet, self._idle_deadline)

    # --- error logs --------------------------------------------------------------------------------------------

    def _log_error(self, what: str, exc: BaseException) -> None:
        # At most 3 logs per connection and a per-process budget (docs/performance.md: unread stderr blocks).
        self._errors_logged += 1
        if self._errors_logged <= 3 and _limiter.allow():
            expected = isinstance(exc, HboneError)
            log.warning("%s (peer %s): %s", what, self.get_extra_info("peername"), exc, exc_info=not expected)
