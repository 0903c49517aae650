"""The streams of one HTTP/2 connection: engine events turned into stream state, and the stream table.

`StreamRouter` is composed by `hbone.net.connection.H2Connection`. It owns the table of open streams and a
server's request handler tasks; the connection feeds it the engine's events (`dispatch`, one handler per event type
through a dict) and it hands headers, data, trailers, ends and resets to the streams, starts request handlers
(`_run_handler`), and finishes and forgets streams. Abuse limits are counted by the connection's
`hbone.net.abuse.ConnectionGuard` (reached through `RouterHost`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, LimitExceeded, StreamReset
from hbone.net.h2 import api as ev
from hbone.net.lifecycle import code_name
from hbone.net.stream import Stream
from hbone.net.streamtypes import HeaderList, StreamRefused, header_list_size

if TYPE_CHECKING:
    from hbone.net.abuse import ConnectionGuard
    from hbone.net.h2.api import Engine
    from hbone.net.lifecycle import Lifecycle
    from hbone.net.scheduler import SendScheduler
    from hbone.net.settings import H2Settings

StreamHandler = Callable[[Stream], Awaitable[None]]


class RouterHost(Protocol):
    """What the router needs from the connection besides the scheduler and lifecycle."""

    def guard(self) -> ConnectionGuard: ...

    def calm(self, limit: str, detail: str) -> None:
        """A rate limit tripped: GOAWAY ENHANCE_YOUR_CALM and close."""

    def log_error(self, what: str, exc: BaseException) -> None: ...

    def new_stream(self, sid: int, headers: HeaderList, local: bool) -> Stream:
        """A `Stream` owned by the connection (the router keeps no reference to the connection itself)."""


class StreamRouter:
    """Open streams by id, and what happens to them as the engine's events arrive (see the module docstring)."""

    __slots__ = (
        "_client",
        "_engine",
        "_handler",
        "_host",
        "_lifecycle",
        "_loop",
        "_scheduler",
        "_settings",
        "pending",
        "settings_seen",
        "streams",
        "tasks",
        "waiters",
    )

    def __init__(
        self,
        *,
        host: RouterHost,
        engine: Engine,
        client: bool,
        loop: asyncio.AbstractEventLoop,
        settings: H2Settings,
        scheduler: SendScheduler,
        lifecycle: Lifecycle,
        handler: StreamHandler | None,
    ) -> None:
        self._host = host
        self._engine = engine
        self._client = client
        #: open_stream callers waiting for a free slot.
        self.waiters: deque[asyncio.Future[None]] = deque()
        self._loop = loop
        self._settings = settings
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._handler = handler
        self.streams: dict[int, Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending: dict[int, asyncio.Task[None]] = {}  # handler tasks of request streams not answered yet
        self.settings_seen = False  # the peer's first SETTINGS arrived

    def dispatch(self, events: list[ev.Event]) -> None:
        """Handle one read's events in order; stops when a limit closed the connection (the rest is the
        attacker's)."""
        table = _HANDLERS
        lifecycle = self._lifecycle
        for event in events:
            handler = table.get(event.__class__)
            if handler is not None:
                handler(self, event)
                if lifecycle.closed:
                    return

    def new_local(self, sid: int, headers: HeaderList, end_stream: bool) -> Stream:
        """A stream we opened (client) with `headers` already queued in the engine."""
        stream = self._host.new_stream(sid, headers, True)
        self.streams[sid] = stream
        if end_stream:
            stream.outbox.end_queued = True
            self.end_sent(stream)
        return stream

    # --- stream bookkeeping (also the scheduler's host) -----------------------------------------------------

    def end_sent(self, stream: Stream) -> None:
        """Our END_STREAM went into the engine: finish the stream, or reset a request nobody reads any more."""
        stream.outbox.ended = True
        if stream.reset_after_end and not stream.peer_ended:
            self._scheduler.reset(stream.stream_id, H2ErrorCode.NO_ERROR)
            self.fail_stream(stream, StreamReset(H2ErrorCode.NO_ERROR, "response complete; request not read"))
            return
        self._maybe_finish(stream)

    def stop_sending(self, stream: Stream) -> None:
        """The peer asked us to stop sending (RST_STREAM NO_ERROR after its complete response)."""
        outbox = stream.outbox
        outbox.discard()
        outbox.end_queued = outbox.ended = True
        outbox.wake()
        self._scheduler.blocked.pop(stream.stream_id, None)
        self._maybe_finish(stream)

    def _maybe_finish(self, stream: Stream) -> None:
        if stream.outbox.ended and stream.peer_ended:
            stream.finish()
            self._forget(stream)

    def fail_stream(self, stream: Stream, exc: HboneError) -> None:
        unread = stream.fail(exc)
        if unread:
            self._scheduler.credit(stream.stream_id, unread)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        streams = self.streams
        streams.pop(stream.stream_id, None)
        self._scheduler.blocked.pop(stream.stream_id, None)
        if self.waiters:
            self._loop.call_soon(self.wake_waiters)
        self._lifecycle.stream_gone(not streams)

    def fail_all(self, exc: HboneError) -> None:
        """Teardown: fail every stream (keeping what a finished peer sent), slot waiter and handler task."""
        for stream in list(self.streams.values()):
            stream.fail(exc, keep_received=True)
        self.streams.clear()
        self.fail_waiters(exc)
        self.pending.clear()
        for task in list(self.tasks):
            task.cancel()

    # --- stream slots (a client's streams count against the peer's SETTINGS_MAX_CONCURRENT_STREAMS) ------------

    @property
    def peer_limit(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (our assumed initial value until its SETTINGS arrive)."""
        limit = self._engine.peer_max_concurrent_streams
        return limit if self.settings_seen else min(limit, self._settings.initial_max_send_streams)

    @property
    def free_slots(self) -> int:
        """How many more streams we may open now."""
        if not self._lifecycle.usable:
            return 0
        # Our count, not h2's open_outbound_streams (walks every stream: ~8% of churn client CPU); all are outbound.
        return max(0, self.peer_limit - (len(self.streams) if self._client else 0))

    async def slot(self, wait: bool) -> None:
        """Return once one more stream fits the peer's limit. LimitExceeded when it does not and `wait` is False;
        ConnectionLost (retryable elsewhere) when the connection cannot take new streams."""
        while self.free_slots <= 0:
            self._lifecycle.raise_if_unusable()
            if not wait:
                raise LimitExceeded("peer's SETTINGS_MAX_CONCURRENT_STREAMS reached")
            fut = self._loop.create_future()
            self.waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self.wake_waiters()  # pass the slot we were given to the next waiter
                raise
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)

    def wake_waiters(self) -> None:
        waiters = self.waiters
        if not waiters:
            return
        free = self.free_slots
        while free > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def fail_waiters(self, exc: HboneError) -> None:
        """No new streams from now on: every slot waiter fails with `exc`."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: the waiter may have been cancelled meanwhile

    # --- event handlers (dispatched from `dispatch`) ---------------------------------------------------------

    def _on_request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        s = self._settings
        goaway_last = self._lifecycle.goaway_sent_last_id
        refuse = (
            self._handler is None
            or self._lifecycle.closed
            or (goaway_last is not None and sid > goaway_last)
            or len(self.streams) >= s.max_concurrent_streams  # not the engine's count: h2 walks every stream
        )
        if not refuse and len(self.pending) >= s.pending_stream_limit:
            self._host.guard().trip("h2_pending_streams", f"{len(self.pending)} requests not answered yet")
            refuse = True
        if refuse:  # RFC 9113 §8.7: REFUSED_STREAM means "not processed, retry elsewhere"
            self._scheduler.reset(sid, H2ErrorCode.REFUSED_STREAM)
            return
        headers = event.headers
        stream = self._host.new_stream(sid, headers, False)
        self.streams[sid] = stream
        if header_list_size(headers) > s.max_header_list_size:
            # RFC 9113 §10.5.1 / RFC 6585 §5: answer 431 rather than tearing the connection down.
            stream.reset_after_end = True
            stream.send_headers([(b":status", b"431")], end_stream=True)
            return
        assert self._handler is not None
        task = self._loop.create_task(self._run_handler(self._handler, stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.pending[sid] = task  # until the response headers go out (`answered`)

    def answered(self, stream: Stream) -> None:
        """A request's response headers are going out: a reset from now on is not a premature one."""
        self.pending.pop(stream.stream_id, None)

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        headers = event.headers
        if header_list_size(headers) > self._settings.max_header_list_size:
            self._scheduler.reset(stream.stream_id, H2ErrorCode.PROTOCOL_ERROR)
            self.fail_stream(stream, LimitExceeded("response header list exceeds max_header_list_size"))
            return
        stream.on_response(headers)

    def _on_trailers(self, event: ev.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_trailers(event.headers)

    def _on_data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        flow = event.flow
        data = event.data
        stream = self.streams.get(sid)
        if stream is None or stream.error is not None:
            self._scheduler.credit(sid, flow)  # nobody will read it; give the window back at once
            return
        if flow > len(data):
            self._scheduler.credit(sid, flow - len(data))  # padding is never read by the application
        if data:
            stream.on_data(data)

    def _on_stream_ended(self, event: ev.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_end()
            self._maybe_finish(stream)

    def _on_stream_reset(self, event: ev.StreamReset) -> None:
        task = self.pending.pop(event.stream_id, None)
        if task is not None:
            # Reset before we answered: stop its work now, upstream dial included (the dial's socket is closed by
            # the cancellation), and count it: many of these per second is the rapid reset attack (CVE-2023-44487).
            task.cancel()
            if event.remote and self._host.guard().premature_reset(self._loop.time()):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.fail_stream(stream, StreamReset(event.code, "stream reset by peer"))
                limit = self._settings.max_resets_per_second
                self._host.calm("h2_rapid_reset", f"over {limit} unanswered streams reset/s")
                return
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        code = event.code
        if code == H2ErrorCode.NO_ERROR and stream.peer_ended:
            # RFC 9113 §8.1: after a complete response, RST_STREAM(NO_ERROR) only asks us to stop sending; the
            # response must not be discarded.
            self.stop_sending(stream)
            return
        exc: HboneError
        if code == H2ErrorCode.REFUSED_STREAM:
            exc = StreamRefused()
        elif event.remote:
            exc = StreamReset(code, f"stream reset by peer ({code_name(code)})")
        else:
            exc = StreamReset(code, f"stream reset after a protocol error ({code_name(code)})")
        self.fail_stream(stream, exc)

    def _on_window_updated(self, event: ev.WindowUpdated) -> None:
        if event.stream_id == 0:
            self._scheduler.pump_blocked()
        else:
            stream = self._scheduler.blocked.get(event.stream_id)
            if stream is not None:
                self._scheduler.pump(stream)

    def _on_control_frame(self, event: Any) -> None:
        """PING and PRIORITY frames (the engine answers PINGs itself): only counted against the flood limit."""
        if self._host.guard().control_frames(self._loop.time()):
            limit = self._settings.max_control_frames_per_second
            self._host.calm("h2_control_flood", f"over {limit} control frames/s")

    def _on_remote_settings(self, event: ev.SettingsChanged) -> None:
        if self.settings_seen:  # the first SETTINGS of every connection is not a flood
            self._on_control_frame(event)
            if self._lifecycle.closed:
                return
        self.settings_seen = True
        if event.window_changed:
            self._scheduler.pump_blocked()

    def _on_ping_ack(self, event: ev.PingAcked) -> None:
        self._lifecycle.on_ping_ack(event)

    def _on_goaway(self, event: ev.GoAwayReceived) -> None:
        self._lifecycle.on_goaway(event)

    # --- server handlers -------------------------------------------------------------------------------------

    async def _run_handler(self, handler: StreamHandler, stream: Stream) -> None:
        try:
            try:
                await handler(stream)
            except asyncio.CancelledError:
                stream.reset(H2ErrorCode.CANCEL)
                raise
            except Exception as exc:  # the exception is consumed here: no "Task exception was never retrieved"
                if stream.error is None and not isinstance(exc, (StreamReset, ConnectionLost)):
                    self._host.log_error(f"stream {stream.stream_id} handler failed", exc)
                stream.reset(exc.h2_code if isinstance(exc, HboneError) else H2ErrorCode.INTERNAL_ERROR)
                return
            if stream.closed or stream.error is not None:
                return
            if not stream.headers_sent:
                stream.reset(H2ErrorCode.INTERNAL_ERROR)
                return
            # RFC 9113 §8.1: once the response is complete the server may reset a request it no longer reads.
            stream.reset_after_end = True
            if stream.outbox.ended:
                self.end_sent(stream)
            else:
                stream.write_eof()
        finally:
            self.pending.pop(stream.stream_id, None)  # answered, failed or cancelled: no longer pending


# Engine event type -> handler, shared by every router: a dict of bound methods per connection cost ~2 KiB for
# every one of an xDS server's idle clients (tools/bench/xds_memprobe.py).
_HANDLERS: dict[type[ev.Event], Callable[[StreamRouter, Any], None]] = {
    ev.RequestReceived: StreamRouter._on_request,
    ev.ResponseReceived: StreamRouter._on_response,
    ev.TrailersReceived: StreamRouter._on_trailers,
    ev.DataReceived: StreamRouter._on_data,
    ev.StreamEnded: StreamRouter._on_stream_ended,
    ev.StreamReset: StreamRouter._on_stream_reset,
    ev.WindowUpdated: StreamRouter._on_window_updated,
    ev.SettingsChanged: StreamRouter._on_remote_settings,
    ev.PingAcked: StreamRouter._on_ping_ack,
    ev.ControlFrame: StreamRouter._on_control_frame,
    ev.GoAwayReceived: StreamRouter._on_goaway,
}
