"""`relay(downstream, upstream)`: the one way bytes are joined between two ends in `hbone`.

Every front end and gateway relays through here, ztunnel's `copy_bidirectional` shape: one call joins two byte
ends with half-close both ways, resets, bounded buffering and an idle timeout, and returns one `RelayResult`
(bytes each way, which side ended first, the error) for the caller to record. Which machinery moves the bytes is
chosen here:

- a `TcpPipe` (a TCP connection whose protocol is ours) joined to a tunnel `Stream` takes the callback path
  (`pipe.py`): TCP data goes straight into the stream's send queue and stream DATA straight into the transport,
  in the callback that received it, with no task per chunk; a downstream `TcpEnd` accepted by `start_server`
  (every front end's listener) is handed over to a `TcpPipe` first (`handoff()`, below);
- two tunnel `Stream`s take the stream callback path (`bridge.py`), the same way;
- any other pair of stream-shaped ends (a `TlsStream`, a `TcpEnd` that was not handed over) takes the
  task path below: one copy task per direction.

Semantics (RFC 9113 §8.5 for the tunnel ends, ztunnel's `copy_bidirectional`):
- an EOF read on one end becomes `write_eof()` on the other (TCP FIN <-> END_STREAM <-> TLS close_notify); the
  relay ends cleanly once both directions have ended and both ends have closed;
- an error in either direction resets both ends: CANCEL for our own errors (`HboneError`), CONNECT_ERROR for
  transport ones (a TCP reset), as RFC 9113 §8.5 asks of a CONNECT proxy; the error is the result's `error`;
- backpressure: each direction holds one read chunk and waits on the writing end's `drain()`;
- cancelling the relay resets both ends with CANCEL, then re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from hbone.errors import H2ErrorCode, HboneError, StreamReset
from hbone.net.relay.bridge import StreamBridge
from hbone.net.relay.pipe import TcpPipe
from hbone.net.relay.result import DOWNSTREAM, IDLE_TIMEOUT, UPSTREAM, IdleTimeout, RelayResult, Side, watch
from hbone.net.stream import Stream

CHUNK = 64 * 1024


class End(Protocol):
    """A stream-shaped end: `Stream`, `TlsStream`, `TcpEnd`."""

    async def read(self, n: int = -1) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def reset(self, code: int = H2ErrorCode.CANCEL) -> None: ...

    async def wait_closed(self) -> None: ...


class TcpEnd:
    """An asyncio TCP (or TLS) connection as an `End`; `first` is bytes already read from it (sniffing, parsers)
    that `read()` hands out before anything else. `wait_closed()` closes it: the relay calls that last."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b"") -> None:
        self.reader, self.writer = reader, writer
        self.pending = first  # read before, handed out first

    async def read(self, n: int = -1) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return await self.reader.read(n)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def write_eof(self) -> None:
        if self.writer.can_write_eof():  # TLS transports cannot half-close; the close ends them instead
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write_eof()

    def reset(self, code: int = H2ErrorCode.CANCEL) -> None:
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def relay(
    down: End | TcpPipe | Any, up: End | TcpPipe | Any, *, idle_timeout: float | None = IDLE_TIMEOUT
) -> RelayResult:
    """Relay until both directions ended or one broke; never raises but cancellation (then both ends are reset).

    `down` is the side that asked for the connection (the client, or the tunnel on an inbound), `up` the side it
    reaches: `RelayResult.sent` counts down -> up. `idle_timeout` (seconds; None or 0: none) ends a relay that
    moved no byte either way for that long with `IdleTimeout`.
    """
    if isinstance(down, TcpEnd) and isinstance(up, Stream):
        pipe = await handoff(down.reader, down.writer, down.pending)
        if pipe is not None:
            down = pipe
    if isinstance(up, TcpPipe) and isinstance(down, Stream):
        up.start(down, tcp_side=UPSTREAM, idle_timeout=idle_timeout)
        return await up.wait()
    if isinstance(down, TcpPipe) and isinstance(up, Stream):
        down.start(up, tcp_side=DOWNSTREAM, idle_timeout=idle_timeout)
        return await down.wait()
    if isinstance(down, TcpPipe) or isinstance(up, TcpPipe):
        raise TypeError("a TcpPipe relays to a tunnel Stream only")
    if isinstance(down, Stream) and isinstance(up, Stream):
        bridge = StreamBridge(down, up, idle_timeout)
        bridge.start()
        return await bridge.wait()
    return await copy_bidirectional(down, up, idle_timeout=idle_timeout)


async def copy_bidirectional(
    down: End, up: End, *, idle_timeout: float | None, chunk: int = CHUNK, result: RelayResult | None = None
) -> RelayResult:
    """Relay between `down` and `up` until both directions ended or one broke. Never raises but cancellation."""
    res = result if result is not None else RelayResult()

    async def sent() -> None:
        await _copy(down, up, res, DOWNSTREAM, chunk)

    async def received() -> None:
        await _copy(up, down, res, UPSTREAM, chunk)

    async def closed() -> None:  # both directions ended: wait until both ends closed (our END_STREAM left)
        await asyncio.gather(down.wait_closed(), up.wait_closed())

    running: list[asyncio.Future[None]] = [asyncio.ensure_future(sent()), asyncio.ensure_future(received())]

    def on_idle() -> None:
        res.error = IdleTimeout(idle_timeout or 0)
        for task in running:
            task.cancel()

    idle = watch(idle_timeout, lambda: res.sent + res.received, on_idle)
    try:
        pending: set[asyncio.Future[None]] = set(running)
        while pending and res.error is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            failed = next((t for t in done if not t.cancelled() and t.exception() is not None), None)
            if failed is not None:
                res.error = failed.exception()
        if res.error is None:
            running.append(asyncio.ensure_future(closed()))
            await asyncio.wait([running[-1]])
            if not running[-1].cancelled() and running[-1].exception() is not None:
                res.error = running[-1].exception()
            elif res.error is None:
                res.error = _late_reset(down) or _late_reset(up)
                return res
    except asyncio.CancelledError:
        _reset(down, up, H2ErrorCode.CANCEL)
        await _reap(running)
        raise
    finally:
        if idle is not None:
            idle.cancel()
    _reset(down, up, H2ErrorCode.CANCEL if isinstance(res.error, HboneError) else H2ErrorCode.CONNECT_ERROR)
    await _reap(running)
    return res


async def _copy(src: End, dst: End, res: RelayResult, src_side: Side, chunk: int) -> None:
    count_sent = src_side == DOWNSTREAM
    dst_side: Side = UPSTREAM if count_sent else DOWNSTREAM
    while True:
        try:
            data = await src.read(chunk)
        except Exception:  # not cancellation: that is the idle timeout or our caller, neither side's end
            res.ended(src_side)
            raise
        try:
            if not data:
                res.ended(src_side)
                dst.write_eof()
                return
            dst.write(data)
            if count_sent:
                res.sent += len(data)
            else:
                res.received += len(data)
            await dst.drain()
        except Exception:
            res.ended(dst_side)
            raise


def _late_reset(end: End) -> BaseException | None:
    """A reset that arrived after both directions had ended (a stream reset with an error code) still counts."""
    err = getattr(end, "error", None)
    return err if isinstance(err, StreamReset) and err.code != H2ErrorCode.NO_ERROR else None


def _reset(down: End, up: End, code: int) -> None:
    for end in (down, up):
        with contextlib.suppress(Exception):
            end.reset(code)


async def _reap(tasks: list[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    # Retrieve every outcome so no "exception was never retrieved" is logged.
    await asyncio.gather(*tasks, return_exceptions=True)


# --- handing an accepted asyncio stream connection to the callback path -------------------------------------------
#
# Front ends parse their handshake (SOCKS5, HTTP CONNECT, a ClientHello, PROXY v2) with `asyncio.StreamReader` /
# `StreamWriter`; the relay then moves bulk bytes. A `TcpEnd` whose reader came from `start_server` below can be
# handed over: reading is paused, what the reader buffered (and whether the peer's FIN already arrived) goes to a
# `TcpPipe`, which becomes the transport's protocol. From there on every chunk is relayed in the callback that
# received it, as on `hbone serve`'s inbound, instead of by two copy tasks.
#
# Only plain TCP is handed over: a TLS transport stays on the task path (it cannot half-close, and its reads are
# already batched by the TLS layer).

_LIMIT = 64 * 1024  # asyncio.start_server's default StreamReader limit

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class HandoffReader(asyncio.StreamReader):
    """A `StreamReader` that remembers whether the peer's EOF arrived, so its connection can be handed over."""

    peer_eof = False

    def feed_eof(self) -> None:
        self.peer_eof = True
        super().feed_eof()


async def start_server(
    client_connected: ClientConnected,
    host: str | None = None,
    port: int | None = None,
    *,
    sock: socket.socket | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """`asyncio.start_server`, with readers whose connections `relay()` can move to the callback path."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(HandoffReader(_LIMIT, loop), client_connected, loop)

    if sock is not None:
        return await loop.create_server(factory, sock=sock, **kwargs)
    return await loop.create_server(factory, host, port, **kwargs)


async def handoff(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> TcpPipe | None:
    """The connection as a `TcpPipe` (not started), or None when it cannot be handed over (not from
    `start_server`, TLS, already failed or closing). `first` is data read from it earlier that must go first."""
    transport = cast(asyncio.Transport, writer.transport)  # a TCP server's transport reads too
    if not isinstance(reader, HandoffReader) or reader.exception() is not None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    transport.pause_reading()
    peer_eof = reader.peer_eof
    # With EOF fed, read() returns the buffer without waiting: no loop turn (no data_received) before the swap.
    reader.feed_eof()
    buffered = await reader.read()
    return TcpPipe.adopt(transport, first + buffered, peer_eof)
