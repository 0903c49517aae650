"""asyncio driver for one HTTP/2 connection (client or server), built on the sans-IO `h2` library.

The driver is an `asyncio.BufferedProtocol` (one reused receive buffer; and uvloop takes its buffered TLS path only
for protocols that are not also `asyncio.Protocol`). Received bytes go into h2 and the resulting events are
dispatched through a dict; frames h2 queues are written in one `transport.write` per batch.

Flow control (RFC 9113 §5.2, §6.9): inbound windows are credited only when the application reads the bytes;
outbound data waits in each stream's bounded queue until the peer's windows and the transport allow it.
Keepalive, GOAWAY, `drain()` (RFC 9113 §6.8), close and teardown live in `hbone.net.lifecycle` (a mixin).
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h2.events as ev
import h2.exceptions as h2x
from h2.settings import SettingCodes, Settings

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, LimitExceeded, ProtocolError, StreamReset
from hbone.net.h2memory import compact_settings
from hbone.net.h2tuning import make_h2
from hbone.net.lifecycle import ConnectionLifecycle, code_name
from hbone.net.settings import H2Settings
from hbone.net.stream import HeaderInput, HeaderList, Stream, StreamRefused, encode_headers, header_list_size

StreamHandler = Callable[[Stream], Awaitable[None]]

_DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2 initial connection window
_FLUSH_EARLY = 256 * 1024  # write out h2's buffer at once when it grows past this (bounds bursts)
_FLUSH_NOW = 16 * 1024  # outside a read batch, an idle connection writes up to this much at once (latency)


class H2Connection(ConnectionLifecycle, asyncio.BufferedProtocol):
    """One HTTP/2 connection. Client: `await connect(...)`; server: `H2Connection.server_factory(handler)`."""

    def __init__(
        self,
        *,
        client: bool,
        settings: H2Settings | None = None,
        handler: StreamHandler | None = None,
        registry: set[H2Connection] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = client
        self.settings = settings or (H2Settings.client() if client else H2Settings.server())
        self._handler = handler
        self._registry = registry
        self._h2 = make_h2(client=client, settings=self.settings)
        self._transport: asyncio.Transport | None = None
        self._rview = _receive_buffer(self.settings.read_buffer_size)
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, Stream] = {}  # streams with queued data waiting for window or the transport
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity_waiters: deque[asyncio.Future[None]] = deque()
        self._write_paused = False
        self._flush_handle: asyncio.Handle | None = None
        self._receiving = False  # inside buffer_updated: its frames go out in one write at the end
        self._remote_settings_seen = False
        self._init_lifecycle()  # closing/closed state, GOAWAY bookkeeping, keepalive timers
        self._dispatch = _dispatch_table(type(self))  # shared by the class: ~2 KiB less per connection

    @classmethod
    def server_factory(
        cls, handler: StreamHandler, settings: H2Settings | None = None, registry: set[H2Connection] | None = None
    ) -> Callable[[], H2Connection]:
        """A protocol factory for `loop.create_server`; `registry` (optional) tracks live connections."""
        return lambda: cls(client=False, settings=settings, handler=handler, registry=registry)

    # --- public state ----------------------------------------------------------------------------------------

    @property
    def available_streams(self) -> int:
        """How many more streams the peer's SETTINGS_MAX_CONCURRENT_STREAMS allows right now."""
        if not self.is_usable:
            return 0
        # Our count, not h2's open_outbound_streams (walks every stream: ~8% of churn client CPU); all are outbound.
        return max(0, self.peer_max_concurrent_streams - (len(self._streams) if self.client else 0))

    @property
    def peer_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (our assumed initial value until its SETTINGS arrive)."""
        limit = int(self._h2.remote_settings.max_concurrent_streams)
        return limit if self._remote_settings_seen else min(limit, self.settings.initial_max_send_streams)

    @property
    def active_streams(self) -> int:
        """Streams not yet finished in both directions."""
        return len(self._streams)

    @property
    def ssl_object(self) -> _ssl.SSLObject | None:
        """The TLS session (None for h2c); the caller derives the peer identity from it."""
        obj: _ssl.SSLObject | None = self.get_extra_info("ssl_object")
        return obj

    @property
    def peer_cert(self) -> bytes | None:
        """The peer's leaf certificate, DER-encoded (None for h2c or when the peer sent none)."""
        obj = self.ssl_object
        return obj.getpeercert(binary_form=True) if obj is not None else None

    # --- client API ----------------------------------------------------------------------------------------------

    async def open_stream(self, headers: HeaderInput, *, end_stream: bool = False, wait: bool = True) -> Stream:
        """Send request headers on a new stream (RFC 9113 §8.1).

        At the peer's stream limit this waits for a free slot, or raises LimitExceeded when `wait` is False.
        Raises ConnectionLost (retryable on another connection) when the connection cannot take new streams.
        """
        if not self.client:
            raise ProtocolError("open_stream() is for client connections")
        encoded = encode_headers(headers)
        self._check_outbound_size(encoded)
        while self.available_streams <= 0:
            self._raise_if_unusable()
            if not wait:
                raise LimitExceeded("peer's SETTINGS_MAX_CONCURRENT_STREAMS reached")
            fut = self._loop.create_future()
            self._capacity_waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_capacity()  # pass the slot we were given to the next waiter
                raise
            finally:
                if fut in self._capacity_waiters:
                    self._capacity_waiters.remove(fut)
        sid = self._h2.get_next_available_stream_id()
        stream = Stream(self, sid, local=True, request_headers=encoded)
        self._streams[sid] = stream
        try:
            self._h2.send_headers(sid, encoded, end_stream=end_stream)
        except h2x.ProtocolError as exc:
            self._streams.pop(sid, None)
            raise ProtocolError(f"cannot open stream: {exc}") from exc
        if end_stream:
            stream._end_queued = True
            self._local_end(stream)
        self._schedule_flush()
        return stream

    def _check_outbound_size(self, headers: HeaderList) -> None:
        limit = self._h2.remote_settings.max_header_list_size
        if limit is not None and header_list_size(headers) > limit:
            raise LimitExceeded(f"header list of {header_list_size(headers)} bytes exceeds peer's limit {limit}")

    def _wake_capacity(self) -> None:
        free = self.available_streams
        while free > 0 and self._capacity_waiters:
            fut = self._capacity_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    # --- asyncio.BufferedProtocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports do not derive from asyncio.Transport
        self._transport = cast(asyncio.Transport, transport)
        if self._registry is not None:
            self._registry.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not TCP (unix socket, test pipe)
        obj = transport.get_extra_info("ssl_object")
        if obj is not None:
            alpn = obj.selected_alpn_protocol()
            # hbone-istio-protocol.md §1: ALPN h2 on both sides; a server tolerates a client that sent no ALPN.
            if alpn != "h2" and (self.client or alpn is not None):
                self._close_exc = ProtocolError(f"TLS peer negotiated ALPN {alpn!r}, need 'h2'")
                self._teardown(self._close_exc)
                self._transport.abort()
                return
        s = self.settings
        values = {
            SettingCodes.INITIAL_WINDOW_SIZE: s.initial_stream_window,
            SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            SettingCodes.HEADER_TABLE_SIZE: s.header_table_size,  # h2 sends it anyway (default 4096)
        }
        if self.client:
            values[SettingCodes.ENABLE_PUSH] = 0
        self._h2.local_settings = Settings(client=self.client, initial_values=values)
        # A fresh Settings is a deque per setting again (~5 KiB per connection, xds_memprobe.py): compact it too.
        compact_settings(self._h2.local_settings)
        self._h2.decoder.max_header_list_size = 2 * self.settings.max_header_list_size
        # h2 raises its frame-size limit only when a read batch *starts* after our SETTINGS were ACKed, so a peer
        # that sends the ACK and a large frame in one segment would hit FRAME_SIZE_ERROR. Accept what we
        # advertise from the start (frames above 16 KiB before the ACK are not a risk to us).
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.initiate_connection()
        if s.connection_window > _DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(s.connection_window - _DEFAULT_WINDOW)
        self._flush()
        self._arm_ping()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        if not self._first_bytes.done():
            self._first_bytes.set_result(None)
        try:
            events = self._h2.receive_data(self._rview[:nbytes])
        except h2x.ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._receiving = True
        try:
            dispatch = self._dispatch
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(self, event)
        except Exception as exc:  # a bug here must close one connection, never the process
            self._log_error("internal error handling HTTP/2 events", exc)
            self._abort(ConnectionLost(f"internal error: {exc!r}"), H2ErrorCode.INTERNAL_ERROR)
            return
        finally:
            self._receiving = False
        self._flush()
        if self._capacity_waiters:
            self._wake_capacity()
        self._maybe_idle()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pump_blocked()
        self._flush()

    # --- event handlers (dispatched from buffer_updated) -----------------------------------------------------

    def _on_request(self, event: ev.RequestReceived) -> None:
        sid = event.stream_id
        refuse = (
            self._handler is None
            or self._closed
            or (self.goaway_sent_last_id is not None and sid > self.goaway_sent_last_id)
            or len(self._streams) >= self.settings.max_concurrent_streams  # not h2's count: it walks every stream
        )
        if refuse:  # RFC 9113 §8.7: REFUSED_STREAM means "not processed, retry elsewhere"
            self._h2_reset(sid, H2ErrorCode.REFUSED_STREAM)
            return
        headers: HeaderList = list(event.headers)
        stream = Stream(self, sid, local=False, request_headers=headers)
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

    def _on_response(self, event: ev.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        headers: HeaderList = list(event.headers)
        if header_list_size(headers) > self.settings.max_header_list_size:
            self._h2_reset(stream.stream_id, H2ErrorCode.PROTOCOL_ERROR)
            self._fail_stream(stream, LimitExceeded("response header list exceeds max_header_list_size"))
            return
        stream._on_response(headers)

    def _on_trailers(self, event: ev.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._trailers_in = list(event.headers)

    def _on_data(self, event: ev.DataReceived) -> None:
        sid = event.stream_id
        flow = event.flow_controlled_length
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
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return
        code = int(event.error_code)
        if code == H2ErrorCode.NO_ERROR and stream._recv_eof:
            # RFC 9113 §8.1: after a complete response, RST_STREAM(NO_ERROR) only asks us to stop sending; the
            # response must not be discarded.
            self._stop_sending(stream)
            return
        exc: HboneError
        if code == H2ErrorCode.REFUSED_STREAM:
            exc = StreamRefused()
        elif event.remote_reset:
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

    def _on_remote_settings(self, event: ev.RemoteSettingsChanged) -> None:
        self._remote_settings_seen = True
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._pump_blocked()

    def _on_settings_acked(self, event: ev.SettingsAcknowledged) -> None:
        # h2 sets the decoder limit to the advertised value on ACK; keep headroom so that an oversized request
        # gets a 431 on its stream (our check) and only a grossly oversized one kills the connection.
        self._h2.decoder.max_header_list_size = 2 * self.settings.max_header_list_size

    # --- server handlers -------------------------------------------------------------------------------------

    async def _run_handler(self, handler: StreamHandler, stream: Stream) -> None:
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

    # --- sending -------------------------------------------------------------------------------------------------

    def _send_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        try:
            self._h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except h2x.ProtocolError as exc:
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
        h2c = self._h2
        queue = stream._send
        try:
            if queue:
                limit = min(self.settings.max_send_frame_size, h2c.max_outbound_frame_size)
                window = h2c.local_flow_control_window(sid)
                while queue and window > 0:
                    chunk = queue[0]
                    size = len(chunk)
                    n = min(size, window, limit)
                    if n == size:
                        queue.popleft()
                        h2c.send_data(sid, chunk)
                    else:  # split with memoryview slices: no quadratic re-copying of the remainder
                        view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                        h2c.send_data(sid, view[:n])
                        queue[0] = view[n:]
                    window -= n
                    stream._send_len -= n
                    stream.bytes_out += n
                if stream._drain_waiters and stream._send_len <= self.settings.max_send_buffer // 2:
                    stream._wake_drainers()
                if h2c.outbound_size() >= _FLUSH_EARLY:
                    self._flush()
                else:
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
                    h2c.send_headers(sid, stream._trailers_out, end_stream=True)
                else:
                    h2c.end_stream(sid)
                self._local_end(stream)
                self._schedule_flush()
        except h2x.ProtocolError as exc:
            self._send_failed(stream, exc)
        except LimitExceeded as exc:
            self._h2_reset(sid, H2ErrorCode.INTERNAL_ERROR)
            self._fail_stream(stream, exc)

    def _pump_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._write_paused:
                break
            self._pump(stream)

    def _send_failed(self, stream: Stream, exc: h2x.ProtocolError) -> None:
        """h2 refused a send on this stream. Never fatal for the connection.

        performance-notes.md pitfall: h2 processes a whole read batch before we see its events, so a RST_STREAM
        later in the batch may already have closed the stream we are sending on. Its StreamReset event (with
        the real code) is still to come; settle the stream on the next loop iteration if nothing else did.
        """
        self._blocked.pop(stream.stream_id, None)
        stream._send.clear()
        stream._send_len = 0
        if isinstance(exc, h2x.StreamClosedError):
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
        try:
            self._h2.reset_stream(sid, code)
        except h2x.ProtocolError:
            pass  # already closed in h2: nothing to reset
        self._schedule_flush()

    # --- receive-side credit -------------------------------------------------------------------------------------

    def _ack_id(self, sid: int, n: int) -> None:
        """Credit `n` consumed bytes to the stream and connection windows (RFC 9113 §6.9)."""
        if n <= 0 or self._closed:
            return
        try:
            self._h2.acknowledge_received_data(n, sid)
        except h2x.ProtocolError:
            return
        self._schedule_flush()

    # --- stream bookkeeping --------------------------------------------------------------------------------------

    def _maybe_finish(self, stream: Stream) -> None:
        if stream._local_closed and stream._recv_eof:
            stream._finish()
            self._forget(stream)

    def _fail_stream(self, stream: Stream, exc: HboneError) -> None:
        unread = stream._fail(exc)
        if unread:
            self._ack_id(stream.stream_id, unread)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self._streams.pop(stream.stream_id, None)
        self._blocked.pop(stream.stream_id, None)
        if self._capacity_waiters:
            self._loop.call_soon(self._wake_capacity)
        self._maybe_idle()

    # --- writing to the transport --------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        # Coalesce the frames of one loop iteration into a single transport.write. But the first small write of an
        # iteration on an idle connection goes out now: waiting a loop turn added to every hop's latency (RESULTS).
        if self._flush_handle is not None or self._closed:
            return
        idle = self._transport is not None and not self._transport.get_write_buffer_size()
        if idle and not self._receiving and 0 < self._h2.outbound_size() <= _FLUSH_NOW:
            self._flush()
        self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


_buffers = threading.local()


def _receive_buffer(size: int) -> memoryview:
    """The receive buffer of `size` bytes shared by every connection of this thread.

    The event loop fills it (`get_buffer`) and calls `buffer_updated` at once, and `h2.receive_data` copies what
    it keeps before returning, so no connection needs the buffer between two reads: one per size and thread
    replaces one per connection (4 KiB for each idle xDS client, 256 KiB for each tunnel connection).
    """
    views: dict[int, memoryview] | None = getattr(_buffers, "views", None)
    if views is None:
        views = _buffers.views = {}
    view = views.get(size)
    if view is None:
        view = views[size] = memoryview(bytearray(size))
    return view


_EVENT_HANDLERS = {
    ev.RequestReceived: "_on_request",
    ev.ResponseReceived: "_on_response",
    ev.TrailersReceived: "_on_trailers",
    ev.DataReceived: "_on_data",
    ev.StreamEnded: "_on_stream_ended",
    ev.StreamReset: "_on_stream_reset",
    ev.WindowUpdated: "_on_window_updated",
    ev.RemoteSettingsChanged: "_on_remote_settings",
    ev.SettingsAcknowledged: "_on_settings_acked",
    ev.PingAckReceived: "_on_ping_ack",
    ev.ConnectionTerminated: "_on_goaway",
}


_DISPATCH_TABLES: dict[type[Any], dict[type[Any], Callable[[Any, Any], None]]] = {}


def _dispatch_table(cls: type[H2Connection]) -> dict[type[Any], Callable[[Any, Any], None]]:
    """h2 event type -> handler function, once per class (so subclasses' overrides are honoured).

    A dict of bound methods per connection cost ~2 KiB for every one of an xDS server's idle clients
    (tools/bench/xds_memprobe.py); unbound functions called as `handler(self, event)` cost nothing per connection.
    """
    table = _DISPATCH_TABLES.get(cls)
    if table is None:
        table = _DISPATCH_TABLES[cls] = {event: getattr(cls, name) for event, name in _EVENT_HANDLERS.items()}
    return table


async def connect(
    host: str | None = None,
    port: int | None = None,
    *,
    ssl: _ssl.SSLContext | None = None,
    settings: H2Settings | None = None,
    server_hostname: str | None = None,
    sock: socket.socket | None = None,
    connect_timeout: float = 10.0,
) -> H2Connection:
    """Open a client connection: h2c when `ssl` is None, else TLS (the context must offer ALPN h2).

    `server_hostname=""` disables SNI, as ztunnel does (hbone-istio-protocol.md §1).
    """
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {"ssl": ssl}
    if sock is not None:
        kwargs["sock"] = sock
    else:
        kwargs["host"], kwargs["port"] = host, port
    if ssl is not None and server_hostname is not None:
        kwargs["server_hostname"] = server_hostname

    def factory() -> H2Connection:
        return H2Connection(client=True, settings=settings)

    try:
        _, conn = await asyncio.wait_for(loop.create_connection(factory, **kwargs), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionLost(f"cannot connect to {host}:{port}: {exc!r}") from exc
    if conn._close_exc is not None:
        raise conn._close_exc
    return conn


async def serve(
    handler: StreamHandler,
    host: str | None,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    settings: H2Settings | None = None,
    registry: set[H2Connection] | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """Listen for HTTP/2 connections; `handler(stream)` runs as a task per request stream."""
    loop = asyncio.get_running_loop()
    factory = H2Connection.server_factory(handler, settings, registry)
    return await loop.create_server(factory, host, port, ssl=ssl, **kwargs)
