"""HTTP/2 events from the peer, turned into stream state: requests, responses, data, ends, resets, settings.

`ConnectionEvents` is a mixin of `hbone.net.connection.H2Connection`. The driver's `buffer_updated` feeds the
received bytes to the engine (`hbone.net.h2.api`) and calls one handler per event through `dispatch_table`; the
handlers start a server's request handler tasks (`_run_handler`) and hand headers, data, trailers and resets to
the streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, LimitExceeded, StreamReset
from hbone.net.h2 import api as ev
from hbone.net.lifecycle import code_name
from hbone.net.stream import HeaderList, Stream, StreamRefused, header_list_size

if TYPE_CHECKING:
    from hbone.net.abuse import ConnectionGuard
    from hbone.net.connection import H2Connection, StreamHandler
    from hbone.net.h2.api import Engine
    from hbone.net.settings import H2Settings


class ConnectionEvents:
    """The engine event handlers of `H2Connection` (a mixin: it works on the driver's state)."""

    # --- provided by the driver ----------------------------------------------------------------------------------
    _loop: asyncio.AbstractEventLoop
    settings: H2Settings
    _engine: Engine
    _handler: StreamHandler | None
    _streams: dict[int, Stream]
    _blocked: dict[int, Stream]
    _tasks: set[asyncio.Task[None]]
    _remote_settings_seen: bool
    _pending: dict[int, asyncio.Task[None]]
    _closed: bool
    goaway_sent_last_id: int | None

    if TYPE_CHECKING:  # declarations only: real stubs here would shadow the other mixins' methods in the MRO

        def _pump(self, stream: Stream) -> None: ...
        def _pump_blocked(self) -> None: ...
        def _stop_sending(self, stream: Stream) -> None: ...
        def _local_end(self, stream: Stream) -> None: ...
        def _h2_reset(self, sid: int, code: int) -> None: ...
        def _ack_id(self, sid: int, n: int) -> None: ...
        def _maybe_finish(self, stream: Stream) -> None: ...
        def _fail_stream(self, stream: Stream, exc: HboneError) -> None: ...
        def _log_error(self, what: str, exc: BaseException) -> None: ...
        def _guarded(self) -> ConnectionGuard: ...
        def _calm(self, limit: str, detail: str) -> None: ...

    # --- event handlers (dispatched from buffer_updated) -----------------------------------------------------

    def _on_request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        refuse = (
            self._handler is None
            or self._closed
            or (self.goaway_sent_last_id is not None and sid > self.goaway_sent_last_id)
            or len(self._streams) >= self.settings.max_concurrent_streams  # not h2's count: it walks every stream
        )
        if not refuse and len(self._pending) >= self.settings.pending_stream_limit:
            self._guarded().trip("h2_pending_streams", f"{len(self._pending)} requests not answered yet")
            refuse = True
        if refuse:  # RFC 9113 §8.7: REFUSED_STREAM means "not processed, retry elsewhere"
            self._h2_reset(sid, H2ErrorCode.REFUSED_STREAM)
            return
        headers: HeaderList = event.headers
        stream = Stream(cast("H2Connection", self), sid, local=False, request_headers=headers)
        self._streams[sid] = stream
        if header_list_size(headers) > self.settings.max_header_list_size:
            # RFC 9113 §10.5.1 / RFC 6585 §5: answer 431 rather than tearing the connection down.
            stream._reset_after_end = True
            stream.send_headers([(b":status", b"431")], end_stream=True)
            return
        assert self._handler is not None
        task = self._loop.create_task(self._run_handler(self._handler, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._pending[sid] = task  # until the response headers go out (sending._send_headers)

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        headers: HeaderList = event.headers
        if header_list_size(headers) > self.settings.max_header_list_size:
            self._h2_reset(stream.stream_id, H2ErrorCode.PROTOCOL_ERROR)
            self._fail_stream(stream, LimitExceeded("response header list exceeds max_header_list_size"))
            return
        stream._on_response(headers)

    def _on_trailers(self, event: ev.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._trailers_in = event.headers

    def _on_data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        flow = event.flow
        data = event.data
        stream = self._streams.get(sid)
        if stream is None or stream._error is not None:
            self._ack_id(sid, flow)  # nobody will read it; give the window back at once
            return
        if flow > len(data):
            self._ack_id(sid, flow - len(data))  # padding is never read by the application
        if data:
            stream._on_data(data)

    def _on_stream_ended(self, event: ev.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_end(stream._trailers_in)
            self._maybe_finish(stream)

    def _on_stream_reset(self, event: ev.StreamReset) -> None:
        task = self._pending.pop(event.stream_id, None)
        if task is not None:
            # Reset before we answered: stop its work now, upstream dial included (the dial's socket is closed by
            # the cancellation), and count it: many of these per second is the rapid reset attack (CVE-2023-44487).
            task.cancel()
            if event.remote and self._guarded().premature_reset(self._loop.time()):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    self._fail_stream(stream, StreamReset(event.code, "stream reset by peer"))
                self._calm("h2_rapid_reset", f"over {self.settings.max_resets_per_second} unanswered streams reset/s")
                return
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        code = event.code
        if code == H2ErrorCode.NO_ERROR and stream._recv_eof:
            # RFC 9113 §8.1: after a complete response, RST_STREAM(NO_ERROR) only asks us to stop sending; the
            # response must not be discarded.
            self._stop_sending(stream)
            return
        exc: HboneError
        if code == H2ErrorCode.REFUSED_STREAM:
            exc = StreamRefused()
        elif event.remote:
            exc = StreamReset(code, f"stream reset by peer ({code_name(code)})")
        else:
            exc = StreamReset(code, f"stream reset after a protocol error ({code_name(code)})")
        self._fail_stream(stream, exc)

    def _on_window_updated(self, event: ev.WindowUpdated) -> None:
        if event.stream_id == 0:
            self._pump_blocked()
        else:
            stream = self._blocked.get(event.stream_id)
            if stream is not None:
                self._pump(stream)

    def _on_control_frame(self, event: Any) -> None:
        """PING and PRIORITY frames (the engine answers PINGs itself): only counted against the flood limit."""
        if self._guarded().control_frames(self._loop.time()):
            self._calm("h2_control_flood", f"over {self.settings.max_control_frames_per_second} control frames/s")

    def _on_remote_settings(self, event: ev.SettingsChanged) -> None:
        if self._remote_settings_seen:  # the first SETTINGS of every connection is not a flood
            self._on_control_frame(event)
            if self._closed:
                return
        self._remote_settings_seen = True
        if event.window_changed:
            self._pump_blocked()

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
                    self._log_error(f"stream {stream.stream_id} handler failed", exc)
                stream.reset(exc.h2_code if isinstance(exc, HboneError) else H2ErrorCode.INTERNAL_ERROR)
                return
            if stream.closed or stream.error is not None:
                return
            if not stream._headers_sent:
                stream.reset(H2ErrorCode.INTERNAL_ERROR)
                return
            # RFC 9113 §8.1: once the response is complete the server may reset a request it no longer reads.
            stream._reset_after_end = True
            if stream._local_closed:
                self._local_end(stream)
            else:
                stream.write_eof()
        finally:
            self._pending.pop(stream.stream_id, None)  # answered, failed or cancelled: no longer pending


_EVENT_HANDLERS = {
    ev.RequestReceived: "_on_request",
    ev.ResponseReceived: "_on_response",
    ev.TrailersReceived: "_on_trailers",
    ev.DataReceived: "_on_data",
    ev.StreamEnded: "_on_stream_ended",
    ev.StreamReset: "_on_stream_reset",
    ev.WindowUpdated: "_on_window_updated",
    ev.SettingsChanged: "_on_remote_settings",
    ev.PingAcked: "_on_ping_ack",
    ev.ControlFrame: "_on_control_frame",
    ev.GoAwayReceived: "_on_goaway",
}


_DISPATCH_TABLES: dict[type[Any], dict[type[Any], Callable[[Any, Any], None]]] = {}


def dispatch_table(cls: type[ConnectionEvents]) -> dict[type[Any], Callable[[Any, Any], None]]:
    """Engine event type -> handler function, once per class (so subclasses' overrides are honoured).

    A dict of bound methods per connection cost ~2 KiB for every one of an xDS server's idle clients
    (tools/bench/xds_memprobe.py); unbound functions called as `handler(self, event)` cost nothing per connection.
    """
    table = _DISPATCH_TABLES.get(cls)
    if table is None:
        table = _DISPATCH_TABLES[cls] = {event: getattr(cls, name) for event, name in _EVENT_HANDLERS.items()}
    return table
