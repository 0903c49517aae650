"""Handing an accepted asyncio stream connection to the relay's callback path.

Front ends parse their handshake (SOCKS5, HTTP CONNECT, a ClientHello, PROXY v2) with `asyncio.StreamReader` /
`StreamWriter`; the relay then moves bulk bytes. A `TcpEnd` whose reader came from `start_server` below can be
handed over: reading is paused, what the reader buffered (and whether the peer's FIN already arrived) goes to a
`TcpPipe`, which becomes the transport's protocol. From there on every chunk is relayed in the callback that
received it, as on `hbone serve`'s inbound, instead of by two copy tasks.

Only plain TCP is handed over: a TLS transport stays on the task path (it cannot half-close, and its reads are
already batched by the TLS layer).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from hbone.net.relay.pipe import TcpPipe

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
