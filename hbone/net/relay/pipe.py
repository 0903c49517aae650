"""The relay's callback path: one TCP connection and one HTTP/2 tunnel stream joined by callbacks, without tasks.

The task relay (`copy.py`) wakes a task one loop turn after every chunk. Here the TCP side is an
`asyncio.Protocol` and the stream delivers its DATA by callback (`Stream.attach`), so a chunk is written onward in
the same callback that received it. Tunnel churn profile (RESULTS-hbone.md): the two copy tasks, `asyncio.wait`
and the StreamReader/StreamWriter pair were the largest per-tunnel cost outside the HTTP/2 driver.

Semantics are the task relay's (RFC 9113 §8.5):
- TCP FIN -> END_STREAM after the queued data; END_STREAM -> TCP FIN (`write_eof`) after the buffered data.
- A TCP error (reset) resets the stream with CONNECT_ERROR; a stream reset or connection loss aborts the TCP
  connection; the error is reported in `RelayResult.error`, which is None after a clean close both ways.
- Idle timeout: no byte either way for `idle_timeout` seconds resets the stream (CANCEL) and aborts TCP.
- Backpressure: TCP reading pauses while the stream holds more than `QUEUED` bytes it could not send yet (window
  or transport full), and resumes at half of it: what waits for credit stays in the kernel's socket buffer.
  Received stream bytes are credited to the peer's windows only while the TCP transport is below its high-water
  mark; above it the credit is withheld, so the peer can never make us hold more than one window beyond the
  transport's buffer limit. Credit goes back in steps of at most 32 KiB (1/8 of a window).
- Byte counts: `to_stream` is TCP -> stream, `from_stream` is stream -> TCP; the `RelayResult` maps them to
  sent / received by which side the TCP connection is (`start(..., tcp_side=)`).
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Awaitable, Callable

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.readbuffer import shared_buffer
from hbone.net.relay.result import DOWNSTREAM, IDLE_TIMEOUT, UPSTREAM, IdleTimeout, IdleWatch, RelayResult, Side, watch
from hbone.net.stream import Stream

_CREDIT_STEP = 32 * 1024
# TCP bytes held before start() (a client's request while its tunnel opens): reading pauses only beyond this, since
# pausing and resuming cost a system call each (epoll) on every forwarded connection whose client speaks first.
_EARLY_LIMIT = 64 * 1024
# What one TCP read may bring (uvloop's own read buffer is 256,000 bytes): shared by every pipe of a thread, since
# each read is framed or copied before `buffer_updated` returns.
READ_BUFFER = 256 * 1024
# Read no more from TCP while the stream holds more than this unsent (about one DATA frame: the scheduler keeps a
# short tail for the next read to fill). A stream waiting for window credit then leaves the bytes in the kernel
# instead of copying up to max_send_buffer of them into its queue: in bulk through `hbone forward` the stream is
# window-bound most of the time and 77% of its bytes were copied, with glibc trimming and regrowing the heap
# (3,400 brk calls per GB, page faults ~10% of forward's CPU; RESULTS-hbone.md round 6).
QUEUED = 64 * 1024


class TcpPipe(asyncio.BufferedProtocol):
    """The TCP side of the callback path. Create it as the protocol of a TCP transport; `relay()` joins it to a
    stream once the stream may carry data (after the 200 answer, or on the client after the tunnel opened);
    `done` resolves with the `RelayResult` when both directions ended or one broke."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.done: asyncio.Future[RelayResult] = self._loop.create_future()
        self.to_stream = 0  # TCP -> stream bytes
        self.from_stream = 0  # stream -> TCP bytes
        self._tcp_side: Side = UPSTREAM
        self._ended_first: Side | None = None
        self._idle: IdleWatch | None = None
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self._early: list[bytes] = []  # TCP bytes that arrived before start() (server-first upstreams)
        self._early_size = 0
        self._tcp_eof = False  # FIN received from TCP
        self._stream_eof = False  # END_STREAM received
        self._stream_closed = False  # both directions of the stream are finished
        self._lost = False  # TCP transport gone
        self._read_paused = False
        self._draining = False  # reading paused until the stream's send queue drains
        self._send_limit = 0  # QUEUED, or the stream's max_send_buffer if lower
        self._write_paused = False
        self._withheld = 0  # stream bytes written to TCP while it was over its high-water mark: not yet credited
        self._owed = 0  # stream bytes written to TCP, credited in steps of `_credit_step`
        self._credit_step = 0
        self._rbuf = shared_buffer("tcp", READ_BUFFER)

    # --- asyncio.Protocol (TCP side) ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP socket they create or accept (checked with
        # getsockopt on both loops); a second setsockopt per tunnel would be a wasted syscall.
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        # Framed straight from the shared buffer by the stream (`Stream.write` copies only what it must keep):
        # uvloop's data_received made a new bytes object of each read first (RESULTS-hbone.md round 6). Once
        # started, data_received()'s work is done here: one Python call less per read (a 1 KiB round trip is one
        # read each way per proxy).
        stream = self.stream
        if stream is None:
            self.data_received(self._rbuf[:nbytes])
            return
        try:
            stream.write(self._rbuf[:nbytes])
        except HboneError as exc:  # the stream broke or its sending side is closed
            self._fail(exc)
            return
        self.to_stream += nbytes
        if stream.outbox.size > self._send_limit:
            self._wait_drained(stream)

    def data_received(self, data: bytes | memoryview) -> None:
        stream = self.stream
        if stream is None:  # before start(): hold up to _EARLY_LIMIT (and one read), then stop reading
            self._early.append(bytes(data))
            self._early_size += len(data)
            if self._early_size > _EARLY_LIMIT:
                self._pause_reading()
            return
        try:
            stream.write(data)
        except HboneError as exc:  # the stream broke or its sending side is closed
            self._fail(exc)
            return
        self.to_stream += len(data)
        if stream.outbox.size > self._send_limit:
            self._wait_drained(stream)

    def eof_received(self) -> bool:
        self._tcp_eof = True
        if self.stream is not None:  # before start(), start() notes it
            self._ended(self._tcp_side)
            self._end_stream(self.stream)
        return True  # keep our sending side open: TCP half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.done.done():
            return
        if exc is not None:
            self._ended(self._tcp_side)
            self._fail(exc)
            return
        if not self._tcp_eof:  # closed without a FIN first: the same as a FIN for the stream direction
            self.eof_received()
        self._maybe_done()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._withheld and self.stream is not None:
            n, self._withheld = self._withheld + self._owed, 0
            self._owed = 0
            self.stream.credit(n)

    # --- hbone.net.streamtypes.StreamConsumer (stream side) ----------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        if self._lost or self.transport is None or self.transport.is_closing():
            # splice(): the write to a closed TCP connection surfaces as a reset of the stream (CONNECT_ERROR).
            self._fail(ConnectionResetError("upstream TCP connection is closed"))
            return
        self.transport.write(data)
        n = len(data)
        self.from_stream += n
        if self._write_paused:
            self._withheld += n
            return
        # Credit in steps: per small message, h2's acknowledge_received_data was ~5% of a proxy's CPU in the 1 KiB
        # round-trip profile, and it returns no WINDOW_UPDATE below 1/4 of a window anyway. The step is at most
        # 1/8 of the stream window, so the peer can always send; bulk frames (64 KiB) are credited at once.
        owed = self._owed + n
        if owed >= self._credit_step and self.stream is not None:
            self._owed = 0
            self.stream.credit(owed)
        else:
            self._owed = owed

    def stream_eof(self) -> None:
        self._stream_eof = True
        self._ended(self._stream_side)
        # Every byte the peer will send is here: return what the steps still owe. A finished stream's uncredited
        # bytes would be lost from the connection window for good (a pooled connection stalls after enough).
        owed, self._owed, self._withheld = self._owed + self._withheld, 0, 0
        if owed and self.stream is not None:
            self.stream.credit(owed)
        t = self.transport
        if t is not None and not self._lost and t.can_write_eof():
            t.write_eof()  # after the buffered bytes; TLS transports cannot half-close
        self._maybe_done()

    def stream_closed(self) -> None:
        self._stream_closed = True
        self._maybe_done()

    def stream_failed(self, exc: HboneError) -> None:
        self._ended(self._stream_side)
        self._fail(exc)

    # --- control -----------------------------------------------------------------------------------------------

    def start(self, stream: Stream, *, tcp_side: Side = UPSTREAM, idle_timeout: float | None = None) -> None:
        """Join `stream`: flush what TCP sent so far, then relay both ways. `tcp_side` says which end of the relay
        the TCP connection is (it maps the byte counts to sent / received)."""
        self.stream = stream
        self._tcp_side = tcp_side
        self._idle = watch(idle_timeout, self._moved, self._on_idle, self._loop)
        settings = stream.connection.settings
        self._send_limit = min(QUEUED, settings.max_send_buffer)
        self._credit_step = min(_CREDIT_STEP, settings.initial_stream_window // 8)
        early, self._early, self._early_size = self._early, [], 0
        for data in early:
            self.data_received(data)
            if self.done.done():
                return
        if self._tcp_eof:
            self._ended(tcp_side)
            self._end_stream(stream)
        stream.attach(self)
        if not self._draining and not self.done.done():
            self._resume_reading()

    @classmethod
    def adopt(cls, transport: asyncio.Transport, early: bytes, peer_eof: bool) -> TcpPipe:
        """Take over a TCP connection another protocol was reading (`core.handoff`): `early` is what it read and
        nobody consumed, `peer_eof` whether the peer's FIN already arrived. Reading stays paused until `start()`."""
        pipe = cls()
        transport.set_protocol(pipe)
        pipe.connection_made(transport)
        pipe._read_paused = True
        transport.pause_reading()
        if early:
            pipe._early.append(early)
        pipe._tcp_eof = peer_eof
        # The transport tells its new protocol when it drains, but not that it is above its high-water mark now.
        pipe._write_paused = transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        return pipe

    def abort(self, code: int = H2ErrorCode.CANCEL) -> None:
        """Reset the stream with `code` and abort TCP (cancellation)."""
        if self.done.done():
            return
        self._finish_with(asyncio.CancelledError())
        if self.stream is not None:
            self.stream.reset(code)

    async def wait(self) -> RelayResult:
        """`done`, but cancelling the caller aborts both sides (CANCEL), like cancelling the task relay."""
        try:
            return await self.done  # no shield (~2.5 us a tunnel): a cancelled caller cancels `done` with it
        except asyncio.CancelledError:
            if self.done.cancelled():
                if self._idle is not None:
                    self._idle.cancel()
                    self._idle = None
                self._early.clear()
                if self.transport is not None:
                    self.transport.abort()
                if self.stream is not None:
                    self.stream.reset(H2ErrorCode.CANCEL)
            raise

    # --- internals ---------------------------------------------------------------------------------------------

    @property
    def _stream_side(self) -> Side:
        return DOWNSTREAM if self._tcp_side == UPSTREAM else UPSTREAM

    def _ended(self, side: Side) -> None:
        if self._ended_first is None:
            self._ended_first = side

    def _moved(self) -> int:
        return self.to_stream + self.from_stream

    def _on_idle(self) -> None:
        timeout = self._idle.timeout if self._idle is not None else 0.0
        self._idle = None
        self._fail(IdleTimeout(timeout))

    def _result(self, error: BaseException | None) -> RelayResult:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._tcp_side == UPSTREAM:
            sent, received = self.from_stream, self.to_stream
        else:
            sent, received = self.to_stream, self.from_stream
        return RelayResult(sent, received, self._ended_first, error)

    def _end_stream(self, stream: Stream) -> None:
        try:
            stream.write_eof()  # TCP FIN -> END_STREAM after the queued data
        except HboneError as exc:
            self._fail(exc)
            return
        self._maybe_done()

    def _wait_drained(self, stream: Stream) -> None:
        if self._draining:
            return
        fut = stream.drained(self._send_limit)
        if fut is not None:
            self._draining = True
            self._pause_reading()
            fut.add_done_callback(self._on_drained)

    def _on_drained(self, fut: asyncio.Future[None]) -> None:
        self._draining = False
        stream = self.stream
        if self.done.done() or stream is None:
            return
        if stream.error is not None:
            self._fail(stream.error)
            return
        self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()

    def _maybe_done(self) -> None:
        if self.done.done() or not (self._tcp_eof and self._stream_eof and self._stream_closed):
            return
        stream = self.stream
        err = stream.error if stream is not None else None
        late = err if isinstance(err, StreamReset) and err.code != H2ErrorCode.NO_ERROR else None
        self.done.set_result(self._result(late))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        """What broke the relay: reset the stream (CANCEL for our own errors, CONNECT_ERROR for TCP's, as the
        task relay does), abort TCP."""
        if self.done.done():
            return
        self._finish_with(exc)
        if self.stream is not None:
            self.stream.reset(H2ErrorCode.CANCEL if isinstance(exc, HboneError) else H2ErrorCode.CONNECT_ERROR)

    def _finish_with(self, exc: BaseException) -> None:
        # done first: the reset that follows calls back into stream_failed(), which must see us finished.
        self.done.set_result(self._result(exc))
        self._early.clear()
        if self.transport is not None:
            self.transport.abort()


async def open_pipe(host: str, port: int, connect_timeout: float | None = None) -> TcpPipe:
    """Connect to `host:port` (an IP or a name) with a `TcpPipe` as the protocol. Raises OSError / TimeoutError."""
    loop = asyncio.get_running_loop()
    if connect_timeout is None:
        _, pipe = await loop.create_connection(lambda: TcpPipe(loop), host, port)
        return pipe
    # asyncio.timeout()'s rules (our expiry's cancellation becomes TimeoutError, anyone else's stays a
    # cancellation) without its per-use lookups of the loop and task: three getpid system calls per dial.
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("open_pipe() with a timeout must run in a task")
    cancelling, expired = task.cancelling(), False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(connect_timeout, expire)
    try:
        _, pipe = await loop.create_connection(lambda: TcpPipe(loop), host, port)
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError(f"connect to {host}:{port} timed out") from None
        raise
    finally:
        timer.cancel()
    if expired:
        task.uncancel()  # expired as the connect completed: asyncio.timeout() takes its cancellation back too
    return pipe


class Admission(typing.Protocol):
    """A listener's cap on connections (`hbone.proxy.listener.ConnectionGate`), as an accepted pipe takes part."""

    def admit(self, peer: object) -> bool: ...

    def release(self) -> None: ...


class AcceptedPipe(TcpPipe):
    """A `TcpPipe` for an accepted TCP connection whose tunnel stream is opened after the accept (`hbone forward`):
    one task per connection for the open, then callbacks only. Bytes the client sends meanwhile are held (up to
    64 KiB and one read; beyond that reading pauses) and go out first."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[Stream]],
        tasks: set[asyncio.Task[None]],
        on_error: Callable[[BaseException], None] | None = None,
        *,
        idle_timeout: float | None = IDLE_TIMEOUT,
        loop: asyncio.AbstractEventLoop | None = None,
        gate: Admission | None = None,
    ) -> None:
        super().__init__(loop)  # given by a listener's factory: get_running_loop() makes a getpid system call
        self._open_stream = open_stream
        self._tasks = tasks
        self._on_error = on_error
        self._idle_timeout = idle_timeout
        self._tcp_side = DOWNSTREAM  # the accepted client
        self._gate = gate  # the listener's admission: taken in connection_made, given back when lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate is not None and not gate.admit(transport.get_extra_info("peername")):
            self._gate = None  # refused (counted by the gate): nothing to give back, nothing to start
            transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
            return
        super().connection_made(transport)
        task = self._loop.create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()
        super().connection_lost(exc)

    async def _run(self) -> None:
        try:
            stream = await self._open_stream()
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception as exc:  # the tunnel could not be opened: drop the client connection
            self._finish_with(exc)
            if self._on_error is not None:
                self._on_error(exc)
            return
        if self.done.done():  # the client went away while the tunnel was being opened
            stream.reset(H2ErrorCode.CANCEL)
            return
        self.start(stream, tcp_side=DOWNSTREAM, idle_timeout=self._idle_timeout)
        await self.wait()
