"""asyncio driver for one HTTP/2 connection (client or server), on a sans-IO engine (`hbone.net.h2`).

`H2Connection` is an `asyncio.BufferedProtocol` (one reused receive buffer; and uvloop takes its buffered TLS path
only for protocols that are not also `asyncio.Protocol`). It owns the transport and composes four parts, each
reached only through its own methods:

- the engine (`hbone.net.h2.api.Engine`): received bytes in, events out; commands in, bytes out;
- the send scheduler (`hbone.net.scheduler.SendScheduler`): streams' queued bytes into the engine as windows allow,
  the engine's output into the transport, one write per loop iteration;
- the stream router (`hbone.net.events.StreamRouter`): the table of streams and what each engine event does to them;
- the lifecycle (`hbone.net.lifecycle.Lifecycle`): keepalive, GOAWAY, `drain()` (RFC 9113 §6.8), close, teardown.

Streams reach the connection only through `hbone.net.stream.StreamOwner` (its methods under "ports"). Flow control
(RFC 9113 §5.2, §6.9): inbound windows are credited only when the application reads the bytes; outbound data waits
in each stream's bounded outbox until the peer's windows and the transport allow it. Abuse limits (rapid reset,
control-frame floods, a peer that does not read, small reads for floods of tiny frames) are counted by the sans-IO
`hbone.net.abuse.ConnectionGuard` and enforced here and in the router.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import weakref
from collections.abc import Callable
from typing import Any, cast

from hbone.errors import ConnectionLost, H2ErrorCode, HboneError, LimitExceeded, ProtocolError, StreamReset
from hbone.limits import ByteBudget
from hbone.net.abuse import CHATTY_EVENTS, SMALL_READ, ConnectionGuard, log_error
from hbone.net.events import StreamHandler, StreamRouter
from hbone.net.h2 import new_engine
from hbone.net.lifecycle import Lifecycle, code_name
from hbone.net.readbuffer import shared_buffer
from hbone.net.scheduler import SendScheduler
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.net.streamtypes import HeaderInput, HeaderList, encode_headers, header_list_size

__all__ = ["H2Connection", "StreamHandler"]


class H2Connection(asyncio.BufferedProtocol):
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
        loop = self._loop = asyncio.get_running_loop()
        self.client = client
        settings = self.settings = settings or (H2Settings.client() if client else H2Settings.server())
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        # Shared by every connection of this thread: the engine copies what it keeps before buffer_updated returns.
        self._rview = shared_buffer("h2", settings.read_buffer_size)
        engine = self._engine = new_engine(client=client, settings=settings)
        # The parts reach back through a weak proxy: strong references both ways would be reference cycles that keep
        # every closed connection's memory until the cycle collector runs (tests/integration/test_memory_cycles.py).
        port = cast(H2Connection, weakref.proxy(self))
        scheduler = self._scheduler = SendScheduler(engine, settings, loop, port)
        lifecycle = self._lifecycle = Lifecycle(loop, settings, engine, scheduler, port)
        self._router = StreamRouter(
            host=port,
            engine=engine,
            client=client,
            loop=loop,
            settings=settings,
            scheduler=scheduler,
            lifecycle=lifecycle,
            handler=handler,
        )
        # StreamOwner ports on every write and read, bound straight to the scheduler (one call less per chunk).
        self.stream_writable: Callable[[Stream], None] = scheduler.pump
        self.credit_stream: Callable[[int, int], None] = scheduler.credit
        self._guard: ConnectionGuard | None = None  # abuse accounting, made when first needed (`guard`)
        self._read_paused = False  # reading stopped: the outbound buffer is over max_outbound_buffer
        self._errors_logged = 0

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
        return self._router.free_slots

    @property
    def peer_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (our assumed initial value until its SETTINGS arrive)."""
        return self._router.peer_limit

    @property
    def active_streams(self) -> int:
        """Streams not yet finished in both directions."""
        return len(self._router.streams)

    @property
    def is_usable(self) -> bool:
        """May new streams be opened? False once GOAWAY was sent or received or the connection closed."""
        return self._lifecycle.usable

    @property
    def closed(self) -> bool:
        return self._lifecycle.closed

    @property
    def goaway_sent_last_id(self) -> int | None:
        """The last_stream_id of the GOAWAY we sent, if any."""
        return self._lifecycle.goaway_sent_last_id

    @property
    def goaway_received(self) -> tuple[int, int] | None:
        """(error_code, last_stream_id) of a GOAWAY received from the peer."""
        return self._lifecycle.goaway_received

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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default) if self._transport is not None else default

    @property
    def transport(self) -> asyncio.Transport | None:
        """The transport while connected."""
        return self._transport

    @property
    def setup_error(self) -> HboneError | None:
        """Why the connection closed right after it was made (e.g. the TLS peer did not negotiate h2), or None."""
        return self._lifecycle.close_exc

    # --- client API ----------------------------------------------------------------------------------------------

    async def open_stream(self, headers: HeaderInput, *, end_stream: bool = False, wait: bool = True) -> Stream:
        """Send request headers on a new stream (RFC 9113 §8.1).

        At the peer's stream limit this waits for a free slot, or raises LimitExceeded when `wait` is False.
        Raises ConnectionLost (retryable on another connection) when the connection cannot take new streams.
        """
        if not self.client:
            raise ProtocolError("open_stream() is for client connections")
        encoded = encode_headers(headers)
        self.check_outbound_headers(encoded)
        await self._router.slot(wait)
        try:
            sid = self._engine.open_stream(encoded, end_stream)
        except ProtocolError as exc:
            raise ProtocolError(f"cannot open stream: {exc}") from exc
        stream = self._router.new_local(sid, encoded, end_stream)
        self._scheduler.schedule_flush(defer=True)
        return stream

    def flush(self) -> None:
        """Write what is queued now instead of at the end of this loop iteration (a request that is complete)."""
        self._scheduler.flush()

    # --- shutdown (hbone.net.lifecycle) ------------------------------------------------------------------------

    async def drain(self, deadline: float | None = None) -> None:
        """Graceful shutdown (RFC 9113 §6.8): GOAWAY now, let running streams finish for `deadline` seconds
        (default `settings.drain_deadline`), then reset what is left and close."""
        await self._lifecycle.drain(deadline)

    async def close(self) -> None:
        """Close now: GOAWAY, fail every stream with ConnectionLost, close the transport and wait for it."""
        await self._lifecycle.close()

    def abort(self) -> None:
        """Drop the connection at once (no GOAWAY); streams fail with ConnectionLost."""
        self._lifecycle.abort()

    async def wait_closed(self) -> None:
        """Wait until the transport is gone."""
        await asyncio.shield(self._lifecycle.closed_fut)

    def _abort(self, exc: HboneError, code: int | None) -> None:
        """For subclasses: a fatal error, GOAWAY(code) if given, then close after flushing."""
        self._lifecycle.abort_with(exc, code)

    # --- asyncio.BufferedProtocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports do not derive from asyncio.Transport
        self._transport = cast(asyncio.Transport, transport)
        self._scheduler.sink = self._transport
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
                exc = self._lifecycle.close_exc = ProtocolError(f"TLS peer negotiated ALPN {alpn!r}, need 'h2'")
                self._lifecycle.teardown(exc)
                self._transport.abort()
                return
        self._engine.start()
        self._scheduler.flush()
        self._lifecycle.start(server=not self.client)

    def get_buffer(self, sizehint: int) -> memoryview:
        guard = self._guard
        if guard is not None and guard.chatty:
            return self._rview[:SMALL_READ]  # fairness: a flood of tiny frames gets small reads (hbone.net.abuse)
        return self._rview

    def buffer_updated(self, nbytes: int) -> None:
        lifecycle = self._lifecycle
        if lifecycle.closed:
            return
        if not lifecycle.first_bytes.done():
            lifecycle.first_bytes.set_result(None)
        try:
            events = self._engine.receive(self._rview[:nbytes])
        except ProtocolError as exc:
            lifecycle.protocol_error(exc)
            return
        scheduler = self._scheduler
        scheduler.receiving = True
        try:
            self._router.dispatch(events)
        except Exception as exc:  # a bug here must close one connection, never the process
            self.log_error("internal error handling HTTP/2 events", exc)
            lifecycle.abort_with(ConnectionLost(f"internal error: {exc!r}"), H2ErrorCode.INTERNAL_ERROR)
            return
        finally:
            scheduler.receiving = False
        if lifecycle.closed:
            return  # a limit tripped (GOAWAY sent): the rest of the batch was the attacker's
        scheduler.flush()
        router = self._router
        if router.waiters:  # (both checked here: this runs for every read, and they have work only rarely)
            router.wake_waiters()
        if lifecycle.closing:
            lifecycle.maybe_idle()
        if self._guard is not None or len(events) > CHATTY_EVENTS:
            self.guard().observe_read(nbytes, len(events))
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > self.settings.max_outbound_buffer:
            # The peer does not read what we owe it (PING/SETTINGS ACKs, responses): stop reading until it does,
            # so it cannot make us queue more (resume_writing resumes).
            self._read_paused = True
            transport.pause_reading()
            self.trip("h2_outbound_buffer", f"over {self.settings.max_outbound_buffer} bytes unread")

    def pause_writing(self) -> None:
        self._scheduler.pause()

    def resume_writing(self) -> None:
        if self._read_paused and self._transport is not None and not self._lifecycle.closed:
            self._read_paused = False
            self._transport.resume_reading()
        self._scheduler.resume()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost fails the streams

    def connection_lost(self, exc: Exception | None) -> None:
        self._lifecycle.lost(exc)
        self._transport = self._scheduler.sink = None
        if self._registry is not None:
            self._registry.discard(self)

    # --- ports of the composed parts (StreamOwner, SchedulerHost, LifecycleHost, RouterHost); not for applications

    def check_outbound_headers(self, headers: HeaderList) -> None:
        limit = self._engine.peer_max_header_list_size
        if limit is not None and header_list_size(headers) > limit:
            raise LimitExceeded(f"header list of {header_list_size(headers)} bytes exceeds peer's limit {limit}")

    def send_stream_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        if not stream.local:
            self._router.answered(stream)
        self._scheduler.send_headers(stream, headers, end_stream)

    def reset_stream(self, stream: Stream, code: int) -> None:
        self._scheduler.reset(stream.stream_id, code)
        self._router.fail_stream(stream, StreamReset(code, f"stream reset locally ({code_name(code)})"))

    def fail_stream(self, stream: Stream, exc: HboneError) -> None:
        self._router.fail_stream(stream, exc)

    def end_sent(self, stream: Stream) -> None:
        self._router.end_sent(stream)

    @property
    def stream_count(self) -> int:
        return len(self._router.streams)

    def open_streams(self) -> list[Stream]:
        return list(self._router.streams.values())

    def fail_all(self, exc: HboneError) -> None:
        self._router.fail_all(exc)

    def fail_waiters(self, exc: HboneError) -> None:
        self._router.fail_waiters(exc)

    def peer_settings_seen(self) -> bool:
        return self._router.settings_seen

    def new_stream(self, sid: int, headers: HeaderList, local: bool) -> Stream:
        return Stream(self, sid, local=local, request_headers=headers, loop=self._loop)

    def guard(self) -> ConnectionGuard:
        """This connection's abuse accounting (made on first use)."""
        guard = self._guard
        if guard is None:
            s = self.settings
            guard = self._guard = ConnectionGuard(
                resets_per_second=s.max_resets_per_second,
                control_per_second=s.max_control_frames_per_second,
                peer=self.get_extra_info("peername"),
            )
        return guard

    def trip(self, limit: str, detail: str) -> None:
        """Count a trip of `limit` (hbone.limits); logged the first time on this connection."""
        self.guard().trip(limit, detail)

    def calm(self, limit: str, detail: str) -> None:
        """A rate limit tripped: GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §7) and close, counted and logged once."""
        self.trip(limit, detail)
        self._lifecycle.abort_with(ConnectionLost(f"peer exceeded {limit}: {detail}"), H2ErrorCode.ENHANCE_YOUR_CALM)

    def log_error(self, what: str, exc: BaseException) -> None:
        self._errors_logged += 1
        log_error(self._errors_logged, what, exc, self.get_extra_info("peername"))
