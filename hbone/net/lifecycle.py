"""The life and death of one HTTP/2 connection: PING keepalive, GOAWAY, graceful drain, close and teardown.

`Lifecycle` is composed by `hbone.net.connection.H2Connection`; it owns the connection's end states and timers,
while the connection owns the transport, the scheduler (`hbone.net.scheduler`) owns sending and the router
(`hbone.net.events`) owns the streams. The public API (`drain`, `close`, `abort`, `wait_closed`, `closed`,
`goaway_*`) is reached through `H2Connection`.

- Keepalive (ztunnel behaviour): PING every `ping_interval`; no ACK within `ping_timeout` drops the connection
  without a graceful close, because a peer that does not read would make a graceful close wait forever.
- Drain (RFC 9113 §6.8): GOAWAY with the highest stream id we saw, let those streams finish until a deadline,
  reset what is left, close.
- A GOAWAY from the peer stops new streams here, fails our streams above its last_stream_id as refused (safe to
  retry elsewhere), and closes the connection once the remaining streams are done.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, ProtocolError
from hbone.net.h2.api import GoAwayReceived, PingAcked
from hbone.net.streamtypes import StreamRefused

if TYPE_CHECKING:
    from hbone.net.h2.api import Engine
    from hbone.net.scheduler import SendScheduler
    from hbone.net.settings import H2Settings
    from hbone.net.stream import Stream

_LINGER = 1.0  # seconds input is discarded after an error GOAWAY before the close (`_linger_close`)
_PEER_GOAWAY_GRACE = 0.5  # seconds an idle connection stays open after the peer's GOAWAY (`maybe_idle`)


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


class LifecycleHost(Protocol):
    """What the lifecycle needs from the connection: its transport, its streams, accounting and logs."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def stream_count(self) -> int: ...

    def open_streams(self) -> list[Stream]: ...

    def fail_stream(self, stream: Stream, exc: HboneError) -> None: ...

    def fail_all(self, exc: HboneError) -> None:
        """Fail every stream, stream-slot waiter and handler task (teardown)."""

    def fail_waiters(self, exc: HboneError) -> None:
        """Fail the callers waiting for a stream slot (no new streams from now on)."""

    def trip(self, limit: str, detail: str) -> None: ...

    def log_error(self, what: str, exc: BaseException) -> None: ...

    def peer_settings_seen(self) -> bool: ...


class Lifecycle:
    """Keepalive, GOAWAY, drain and close of one connection (see the module docstring)."""

    __slots__ = (
        "_engine",
        "_host",
        "_idle_fut",
        "_leaving",
        "_loop",
        "_ping_deadline",
        "_ping_payload",
        "_ping_timer",
        "_scheduler",
        "_settings",
        "_watch_timer",
        "close_exc",
        "closed",
        "closed_fut",
        "closing",
        "first_bytes",
        "goaway_received",
        "goaway_sent_last_id",
        "idle_since",
        "ping_seq",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: H2Settings,
        engine: Engine,
        scheduler: SendScheduler,
        host: LifecycleHost,
    ) -> None:
        self._loop = loop
        self._settings = settings
        self._engine = engine
        self._scheduler = scheduler
        self._host = host
        self.closing = False  # no new streams: GOAWAY sent or received, or closing
        self.closed = False  # torn down: every stream failed
        self.close_exc: HboneError | None = None
        self.closed_fut: asyncio.Future[None] = loop.create_future()
        self._idle_fut: asyncio.Future[None] | None = None
        self._leaving = False  # the close after the peer's GOAWAY is scheduled (`maybe_idle`)
        self.first_bytes: asyncio.Future[None] = loop.create_future()
        self.goaway_sent_last_id: int | None = None
        #: (error_code, last_stream_id) of a GOAWAY received from the peer.
        self.goaway_received: tuple[int, int] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self.ping_seq = 0
        self._watch_timer: asyncio.TimerHandle | None = None  # server: preface, then idle deadline
        self.idle_since = 0.0  # loop time when the last stream ended

    def start(self, server: bool) -> None:
        """The transport is up: arm keepalive (and, on a server, the preface and idle deadlines)."""
        self._arm_ping()
        if server:
            self._arm_watch()

    @property
    def usable(self) -> bool:
        return self._host.transport is not None and not self.closing and not self.closed

    def raise_if_unusable(self) -> None:
        if self.closed or self._host.transport is None:
            raise self.close_exc or ConnectionLost("HTTP/2 connection is closed")
        if self.closing:
            raise ConnectionLost("HTTP/2 connection is going away (GOAWAY); open a new one")

    def lost(self, exc: Exception | None) -> None:
        """The transport is gone (asyncio's connection_lost)."""
        reason = self.close_exc or ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by peer")
        self.teardown(reason)
        if not self.closed_fut.done():
            self.closed_fut.set_result(None)

    # --- GOAWAY ----------------------------------------------------------------------------------------------

    def on_goaway(self, event: GoAwayReceived) -> None:
        code, last = event.code, event.last_stream_id
        self.goaway_received = (code, last)
        self.closing = True
        for stream in self._host.open_streams():
            sid = stream.stream_id
            if stream.local and sid > last:  # RFC 9113 §6.8: not processed by the peer, safe to retry
                self._scheduler.reset(sid, H2ErrorCode.CANCEL)
                self._host.fail_stream(stream, StreamRefused(f"stream {sid} above GOAWAY last_stream_id {last}"))
        self._host.fail_waiters(ConnectionLost("peer sent GOAWAY"))
        if code != H2ErrorCode.NO_ERROR:
            # The peer is ending the connection, but frames it wrote after the GOAWAY (h2spec http2/7 sends a PING)
            # may still be arriving: linger like after our own error GOAWAY, or the kernel answers them with a reset.
            self.abort_with(ConnectionLost(f"peer sent GOAWAY {code_name(code)} {event.debug!r}"), None, linger=True)

    def send_goaway(self, code: int) -> None:
        self.closing = True
        self._host.fail_waiters(ConnectionLost("connection is going away"))
        if self.goaway_sent_last_id is not None or self._host.transport is None:
            return
        last = self._engine.highest_inbound_stream_id
        try:
            self._engine.goaway(code, last)
        except ProtocolError:
            return
        self.goaway_sent_last_id = last

    def stream_gone(self, none_left: bool) -> None:
        """A stream finished or failed; `none_left`: it was the last one."""
        if none_left:
            self.idle_since = self._loop.time()
        self.maybe_idle()

    def maybe_idle(self) -> None:
        """After GOAWAY, the last stream finishing ends a drain() wait, or closes a connection the peer left."""
        if not self.closing or self._host.stream_count or self.closed:
            return
        if self._idle_fut is not None:
            if not self._idle_fut.done():
                self._idle_fut.set_result(None)
        elif self.goaway_received is not None and not self._leaving:
            # Not at once: frames the peer sent after its GOAWAY (a PING to answer, h2spec 3.8) may still be in
            # flight, and closing with unread input makes the kernel reset the connection, dropping our answers.
            self._leaving = True
            closed = ConnectionLost("connection closed after peer's GOAWAY")
            self._loop.call_later(_PEER_GOAWAY_GRACE, self.close_now, closed)

    # --- shutdown -----------------------------------------------------------------------------------------------

    async def drain(self, deadline: float | None) -> None:
        """GOAWAY now, let running streams finish for `deadline` seconds, then reset what is left and close."""
        if self.closed:
            await asyncio.shield(self.closed_fut)
            return
        timeout = self._settings.drain_deadline if deadline is None else deadline
        self.send_goaway(H2ErrorCode.NO_ERROR)
        self._scheduler.flush()
        if self._host.stream_count:
            self._idle_fut = self._loop.create_future()
            await asyncio.wait([self._idle_fut], timeout=timeout)
        for stream in self._host.open_streams():
            stream.reset(H2ErrorCode.CANCEL)
        await self.close()

    async def close(self) -> None:
        """GOAWAY, fail every stream with ConnectionLost, close the transport and wait for it."""
        transport = self._host.transport
        if not self.closed and transport is not None:
            if not self.first_bytes.done() and transport.get_extra_info("ssl_object") is not None:
                # docs/performance.md: closing a TLS 1.3 client right after the handshake can race the server's
                # SETTINGS / session tickets and stall; wait (briefly) for the peer's first bytes.
                await asyncio.wait([self.first_bytes], timeout=1.0)
            self.close_now(ConnectionLost("connection closed locally"))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed_fut), 5.0)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once (no GOAWAY); streams fail with ConnectionLost."""
        self.teardown(ConnectionLost("connection aborted locally"))
        transport = self._host.transport
        if transport is not None:
            transport.abort()

    def close_now(self, exc: HboneError) -> None:
        if self.closed:
            return  # (and the connection may be gone: it is reached through a weak proxy)
        transport = self._host.transport
        if transport is None:
            return
        self.send_goaway(H2ErrorCode.NO_ERROR)
        self._scheduler.flush()
        self.teardown(exc)
        transport.close()

    def abort_with(self, exc: HboneError, code: int | None, *, linger: bool = False) -> None:
        """Fatal error: GOAWAY(code) if given, fail everything, close the transport after flushing (lingering, see
        `_linger_close`, when we sent an error GOAWAY or `linger` says the peer may still be writing)."""
        if self.closed:
            return
        if code is not None:
            self.send_goaway(code)
        self._scheduler.flush()
        self.close_exc = exc
        self.teardown(exc)
        transport = self._host.transport
        if transport is not None:
            if linger or self.goaway_sent_last_id is not None:
                self._linger_close(transport)
            else:
                transport.close()

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

    def protocol_error(self, exc: ProtocolError) -> None:
        """The engine found a connection error in received bytes (and queued the GOAWAY)."""
        code = int(exc.h2_code)
        self._host.log_error("HTTP/2 protocol error from peer", exc)
        self.closing = True
        self.goaway_sent_last_id = self._engine.highest_inbound_stream_id  # linger so the peer reads the GOAWAY
        self.abort_with(ConnectionLost(f"HTTP/2 protocol error ({code_name(code)}): {exc}"), None)

    def teardown(self, exc: HboneError) -> None:
        """Fail every stream, waiter, timer and handler task; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.closing = True
        for handle in (self._ping_timer, self._ping_deadline, self._watch_timer):
            if handle is not None:
                handle.cancel()
        self._ping_timer = self._ping_deadline = self._watch_timer = None
        self._scheduler.stop()
        self._host.fail_all(exc)
        if self._idle_fut is not None and not self._idle_fut.done():
            self._idle_fut.set_result(None)

    # --- keepalive ---------------------------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        interval = self._settings.ping_interval
        if interval is not None and not self.closed:
            self._ping_timer = self._loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.closed:
            return
        self.ping_seq += 1
        self._ping_payload = self.ping_seq.to_bytes(8, "big")
        try:
            self._engine.ping(self._ping_payload)
        except ProtocolError:
            return
        self._scheduler.flush()
        self._ping_deadline = self._loop.call_later(self._settings.ping_timeout, self._ping_timed_out)

    def on_ping_ack(self, event: PingAcked) -> None:
        if event.opaque != self._ping_payload:
            return
        self._ping_payload = None
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
        self._arm_ping()

    def _ping_timed_out(self) -> None:
        self._ping_deadline = None
        exc = ConnectionLost(f"keepalive: no PING ACK within {self._settings.ping_timeout}s")
        self._host.log_error("dropping HTTP/2 connection", exc)
        self.close_exc = exc
        self.teardown(exc)
        transport = self._host.transport
        if transport is not None:
            transport.abort()  # the peer is not reading: a graceful close could wait forever

    # --- preface and idle deadlines (server side) -----------------------------------------------------------------

    def _arm_watch(self) -> None:
        """Server connections: the peer's preface + SETTINGS must arrive within `preface_timeout`; afterwards a
        connection without streams for `idle_timeout` is closed (GOAWAY NO_ERROR)."""
        s = self._settings
        self.idle_since = self._loop.time()
        if s.preface_timeout is not None:
            self._watch_timer = self._loop.call_later(s.preface_timeout, self._preface_deadline)
        elif s.idle_timeout is not None:
            self._watch_timer = self._loop.call_later(s.idle_timeout, self._idle_deadline)

    def _preface_deadline(self) -> None:
        self._watch_timer = None
        if self.closed:
            return
        if not self._host.peer_settings_seen():
            self._host.trip("preface_timeout", f"no HTTP/2 preface within {self._settings.preface_timeout}s")
            self.abort_with(ConnectionLost("no HTTP/2 preface in time"), H2ErrorCode.SETTINGS_TIMEOUT)
            return
        idle = self._settings.idle_timeout
        if idle is not None:
            self._watch_timer = self._loop.call_later(max(0.0, idle - self._idle_for()), self._idle_deadline)

    def _idle_for(self) -> float:
        return 0.0 if self._host.stream_count else self._loop.time() - self.idle_since

    def _idle_deadline(self) -> None:
        self._watch_timer = None
        idle = self._settings.idle_timeout
        if self.closed or idle is None:
            return
        quiet = self._idle_for()
        if quiet >= idle:
            self._host.trip("idle_timeout", f"no stream for {idle}s")
            self.close_now(ConnectionLost(f"idle for {idle}s"))
            return
        self._watch_timer = self._loop.call_later(idle - quiet, self._idle_deadline)
