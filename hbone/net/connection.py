"""asyncio driver for one HTTP/2 connection (client or server), built on the sans-IO `h2` library.

The driver is an `asyncio.BufferedProtocol` (one reused receive buffer; and uvloop takes its buffered TLS path only
for protocols that are not also `asyncio.Protocol`). Received bytes go into h2 and the resulting events are
dispatched through a dict; frames h2 queues are written in one `transport.write` per batch.

Flow control (RFC 9113 §5.2, §6.9): inbound windows are credited only when the application reads the bytes;
outbound data waits in each stream's bounded queue until the peer's windows and the transport allow it.
The driver is composed of mixins, each reached through `H2Connection`: the h2 event handlers live in
`hbone.net.events`; sending, resets, window credit and transport writes in `hbone.net.sending`; keepalive, GOAWAY,
`drain()` (RFC 9113 §6.8), close and teardown in `hbone.net.lifecycle`. Abuse limits (rapid reset, control-frame
floods, a peer that does not read, small reads for floods of tiny frames) are counted by the sans-IO
`hbone.net.abuse.ConnectionGuard` and enforced here and in the event handlers.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, LimitExceeded, ProtocolError
from hbone.limits import ByteBudget
from hbone.net.abuse import CHATTY_EVENTS, SMALL_READ, ConnectionGuard
from hbone.net.events import ConnectionEvents, dispatch_table
from hbone.net.h2 import new_engine
from hbone.net.h2.api import Engine
from hbone.net.lifecycle import ConnectionLifecycle
from hbone.net.sending import ConnectionSending
from hbone.net.settings import H2Settings
from hbone.net.stream import HeaderInput, HeaderList, Stream, encode_headers, header_list_size

StreamHandler = Callable[[Stream], Awaitable[None]]


# ConnectionSending before ConnectionLifecycle: the lifecycle's placeholder `_flush`/`_h2_reset` must not win.
class H2Connection(ConnectionEvents, ConnectionSending, ConnectionLifecycle, asyncio.BufferedProtocol):
    """One HTTP/2 connection. Client: `await connect(...)`; server: `H2Connection.server_factory(handler)`."""

    #: Bytes its gRPC calls hold in partial / unread messages (`hbone.grpc.call.connection_budget`, made lazily).
    grpc_budget: ByteBudget | None = None

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
        self._engine: Engine = new_engine(client=client, settings=self.settings)
        self._transport: asyncio.Transport | None = None
        self._rview = _receive_buffer(self.settings.read_buffer_size)
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, Stream] = {}  # streams with queued data waiting for window or the transport
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity_waiters: deque[asyncio.Future[None]] = deque()
        self._write_paused = False
        self._flush_handle: asyncio.Handle | None = None
        self._repump_handle: asyncio.Handle | None = None  # a deferred short tail (sending._pump)
        self._receiving = False  # inside buffer_updated: its frames go out in one write at the end
        self._remote_settings_seen = False
        self._pending: dict[int, asyncio.Task[None]] = {}  # handler tasks of request streams not answered yet
        self._guard: ConnectionGuard | None = None  # abuse accounting, made when first needed (`_guarded`)
        self._read_paused = False  # reading stopped: the outbound buffer is over max_outbound_buffer
        self._init_lifecycle()  # closing/closed state, GOAWAY bookkeeping, keepalive timers
        self._dispatch = dispatch_table(type(self))  # shared by the class: ~2 KiB less per connection

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
        limit = self._engine.peer_max_concurrent_streams
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
        try:
            sid = self._engine.open_stream(encoded, end_stream)
        except ProtocolError as exc:
            raise ProtocolError(f"cannot open stream: {exc}") from exc
        stream = Stream(self, sid, local=True, request_headers=encoded)
        self._streams[sid] = stream
        if end_stream:
            stream._end_queued = True
            self._local_end(stream)
        self._schedule_flush()
        return stream

    def _check_outbound_size(self, headers: HeaderList) -> None:
        limit = self._engine.peer_max_header_list_size
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
            # docs/hbone-spec.md §1: ALPN h2 on both sides; a server tolerates a client that sent no ALPN.
            if alpn != "h2" and (self.client or alpn is not None):
                self._close_exc = ProtocolError(f"TLS peer negotiated ALPN {alpn!r}, need 'h2'")
                self._teardown(self._close_exc)
                self._transport.abort()
                return
        self._engine.start()
        self._flush()
        self._arm_ping()
        if not self.client:
            self._arm_watch()

    def get_buffer(self, sizehint: int) -> memoryview:
        guard = self._guard
        if guard is not None and guard.chatty:
            return self._rview[:SMALL_READ]  # fairness: a flood of tiny frames gets small reads (hbone.net.abuse)
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        if not self._first_bytes.done():
            self._first_bytes.set_result(None)
        try:
            events = self._engine.receive(self._rview[:nbytes])
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        self._receiving = True
        try:
            dispatch = self._dispatch
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(self, event)
                    if self._closed:
                        return  # a limit tripped (GOAWAY sent): the rest of the batch is the attacker's
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
        if self._guard is not None or len(events) > CHATTY_EVENTS:
            self._guarded().observe_read(nbytes, len(events))
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > self.settings.max_outbound_buffer:
            # The peer does not read what we owe it (PING/SETTINGS ACKs, responses): stop reading until it does,
            # so it cannot make us queue more (resume_writing resumes).
            self._read_paused = True
            transport.pause_reading()
            self._guarded().trip("h2_outbound_buffer", f"over {self.settings.max_outbound_buffer} bytes unread")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._read_paused and self._transport is not None and not self._closed:
            self._read_paused = False
            self._transport.resume_reading()
        self._pump_blocked()
        self._flush()

    # --- abuse limits ---------------------------------------------------------------------------------------------

    def _guarded(self) -> ConnectionGuard:
        guard = self._guard
        if guard is None:
            s = self.settings
            guard = self._guard = ConnectionGuard(
                resets_per_second=s.max_resets_per_second,
                control_per_second=s.max_control_frames_per_second,
                peer=self.get_extra_info("peername"),
            )
        return guard

    def _trip(self, limit: str, detail: str) -> None:
        """Count a trip of `limit` (hbone.limits); logged the first time on this connection."""
        self._guarded().trip(limit, detail)

    def _calm(self, limit: str, detail: str) -> None:
        """A rate limit tripped: GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §7) and close, counted and logged once."""
        self._trip(limit, detail)
        self._abort(ConnectionLost(f"peer exceeded {limit}: {detail}"), H2ErrorCode.ENHANCE_YOUR_CALM)

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
        streams = self._streams
        streams.pop(stream.stream_id, None)
        self._blocked.pop(stream.stream_id, None)
        if not streams:
            self._idle_since = self._loop.time()
        if self._capacity_waiters:
            self._loop.call_soon(self._wake_capacity)
        self._maybe_idle()


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

    `server_hostname=""` disables SNI, as ztunnel does (docs/hbone-spec.md §1).
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
