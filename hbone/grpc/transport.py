"""Run an `H2Connection` over any `ByteStream`: HTTP/2 (gRPC) inside an HBONE CONNECT tunnel.

`H2Connection` is an asyncio protocol, so the carrier is wrapped as an `asyncio.Transport`: a reader task feeds the
tunnel's bytes to the protocol's buffer, and writes go to the tunnel, with `pause_writing()` while the tunnel's
send queue is above a high-water mark so backpressure reaches the HTTP/2 streams (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from hbone.errors import ConnectionLost, HboneError
from hbone.net.connection import H2Connection
from hbone.net.settings import H2Settings
from hbone.net.tlsstream import ByteStream

__all__ = ["ByteStreamTransport", "connect_over"]

log = logging.getLogger("hbone.grpc.transport")

_READ_SIZE = 256 * 1024
_HIGH_WATER = 1024 * 1024


class ByteStreamTransport(asyncio.Transport):
    """An asyncio transport whose bytes travel over a `ByteStream` (a tunnel, an inner TLS stream)."""

    def __init__(self, carrier: ByteStream, protocol: asyncio.BaseProtocol, extra: dict[str, Any] | None = None):
        super().__init__(extra)
        self._loop = asyncio.get_running_loop()
        self._carrier = carrier
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._paused = False
        self._draining: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._reader = self._loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        proto = self._protocol
        exc: BaseException | None = None
        try:
            while not self._lost:
                data = await self._carrier.read(_READ_SIZE)
                if not data:
                    break
                self._feed(proto, data)
            if not self._lost and isinstance(proto, asyncio.BufferedProtocol | asyncio.Protocol):
                proto.eof_received()
        except HboneError as e:
            exc = e
        except OSError as e:
            exc = e
        self._connection_lost(exc if isinstance(exc, Exception) else None)

    @staticmethod
    def _feed(proto: asyncio.BaseProtocol, data: bytes) -> None:
        if isinstance(proto, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        elif isinstance(proto, asyncio.Protocol):
            proto.data_received(data)

    # --- asyncio.Transport -----------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._carrier.write(bytes(data))
        buffered = getattr(self._carrier, "buffered", None)
        if (buffered is None or buffered > _HIGH_WATER) and self._draining is None:
            if buffered is not None and not self._paused:
                self._paused = True
                self._protocol.pause_writing()
            self._draining = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self._carrier.drain()
        except (HboneError, OSError) as exc:
            self._connection_lost(exc)
            return
        finally:
            self._draining = None
        if self._paused and not self._lost:
            self._paused = False
            self._protocol.resume_writing()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(HboneError, OSError):
            self._carrier.write_eof()
        self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        reset = getattr(self._carrier, "reset", None)
        if reset is not None:
            with contextlib.suppress(HboneError, OSError):
                reset()
        self._connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return int(getattr(self._carrier, "buffered", 0))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._carrier.write_eof()

    def is_reading(self) -> bool:
        return not self._lost

    def pause_reading(self) -> None:
        pass  # the carrier applies its own flow control; H2Connection never pauses reading

    def resume_reading(self) -> None:
        pass

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._protocol.connection_lost(exc)


async def connect_over(
    carrier: ByteStream,
    settings: H2Settings | None = None,
    *,
    factory: Callable[..., H2Connection] = H2Connection,
    **extra: Any,
) -> H2Connection:
    """A client connection (h2c framing) speaking over ``carrier``; ``factory`` builds it (an H2Connection class)."""
    conn = factory(client=True, settings=settings)
    transport = ByteStreamTransport(carrier, conn, extra)
    transport.start()
    if conn.closed:
        raise ConnectionLost("HTTP/2 connection over the tunnel closed during setup")
    return conn
