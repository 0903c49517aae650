"""Every front-end listener accepts through here: a cap on the connections one listener serves at once, one slot of
the process-wide `hbone.limits.TUNNELS` per connection, and the TLS handshake timeout.

A connection over the cap (or with no tunnel slot left) is aborted at accept, before any handler runs or byte is
read, and counted (`max_connections` / `max_tunnels` trips). Three shapes of listener share one `ConnectionGate`:

- `start_listener(handler, …)` for an `asyncio.start_server`-style handler (SOCKS5, HTTP proxy, SNI gateway,
  ingress, REDIRECT/TPROXY capture, `hbone forward` with inner TLS, the node agent's forwards);
- `start_protocol_listener(factory, …)` for a protocol factory: the protocol is made only for an admitted
  connection, and the slot is given back when asyncio reports it lost;
- `start_admitting_listener(factory, …)` for a protocol that admits and releases itself (the callback relay of
  `hbone forward`, `AcceptedPipe`): `factory(gate)`, and no wrapper between the transport and the protocol.

All take `sock=` instead of `host, port` for a socket the caller prepared (TPROXY's IP_TRANSPARENT listener).
The cap is `max_connections` per listener, else this process's default (`set_max_connections`, the CLIs'
`--max-connections`), else `MAX_CONNECTIONS`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hbone.errors import ConfigError
from hbone.limits import TUNNELS, trip_unattached
from hbone.net.readbuffer import shared_buffer
from hbone.net.relay import start_server

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer  # what typeshed's BufferedProtocol.get_buffer returns

__all__ = [
    "MAX_CONNECTIONS",
    "TLS_HANDSHAKE_TIMEOUT",
    "ConnectionGate",
    "ConnectionHandler",
    "set_max_connections",
    "start_admitting_listener",
    "start_listener",
    "start_protocol_listener",
]

#: Connections one front-end listener serves at once; more are closed at accept (counted as `max_connections`).
MAX_CONNECTIONS = 8192
#: Seconds a TLS client of a front end has to finish its handshake (asyncio's own default is 60 s).
TLS_HANDSHAKE_TIMEOUT = 10.0

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_CHUNK = 64 * 1024  # one read for a gated protocol without a buffer of its own

_default_cap = MAX_CONNECTIONS


def set_max_connections(limit: int, flag: str = "--max-connections") -> None:
    """This process's cap per front-end listener, for listeners started from now on (the CLI, from its flag)."""
    global _default_cap
    if limit < 1:
        raise ConfigError(f"{flag} {limit}: must be at least 1")
    _default_cap = limit


class ConnectionGate:
    """Admission for one listener: at most `limit` connections at once, each holding one `TUNNELS` slot."""

    __slots__ = ("active", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.limit = _default_cap if limit is None else limit
        self.active = 0

    def admit(self, peer: object) -> bool:
        """Take a place for a new connection; False (counted, logged at most once a minute) when there is none."""
        if self.active >= self.limit:
            trip_unattached("max_connections", peer, f"over {self.limit} on one listener")
            return False
        if not TUNNELS.try_acquire():  # counts its own trip
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
        TUNNELS.release()


def _where(host: str | None, port: int | None, sock: socket.socket | None) -> dict[str, Any]:
    if sock is not None:
        return {"sock": sock}
    return {"host": host, "port": port, "reuse_address": True}


async def start_listener(
    handler: ConnectionHandler,
    host: str | None = None,
    port: int | None = None,
    *,
    ssl: ssl_module.SSLContext | None = None,
    max_connections: int | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """`asyncio.start_server` for a front end, through a `ConnectionGate`, with the TLS handshake timeout."""
    gate = ConnectionGate(max_connections)

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not gate.admit(writer.get_extra_info("peername")):
            writer.transport.abort()
            return
        try:
            await handler(reader, writer)
        finally:
            gate.release()

    timeout = TLS_HANDSHAKE_TIMEOUT if ssl is not None else None
    # The relay's start_server: a plain TCP client connection is handed to the callback path once relayed (the
    # handler still runs until the relay ends, so the gate's place is held for the connection's whole life).
    return await start_server(gated, ssl=ssl, ssl_handshake_timeout=timeout, **_where(host, port, sock))


class _Gated(asyncio.BufferedProtocol):
    """Holds a gate place from accept until asyncio reports the connection lost; everything in between goes to the
    protocol made for it (refused connections never get one). A buffered protocol gets the reads in its own buffer
    (the relay's `TcpPipe` frames them from there); any other gets them as bytes."""

    __slots__ = ("_buffered", "_factory", "_gate", "_inner")

    def __init__(
        self, gate: ConnectionGate, factory: Callable[[], asyncio.Protocol | asyncio.BufferedProtocol]
    ) -> None:
        self._gate = gate
        self._factory = factory
        self._inner: asyncio.Protocol | asyncio.BufferedProtocol | None = None
        self._buffered: asyncio.BufferedProtocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(transport.get_extra_info("peername")):
            transport.abort()  # type: ignore[attr-defined]  # every stream transport has abort()
            return
        inner = self._inner = self._factory()
        if isinstance(inner, asyncio.BufferedProtocol):
            self._buffered = inner
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        inner, self._inner = self._inner, None
        self._buffered = None
        if inner is not None:
            self._gate.release()
            inner.connection_lost(exc)

    def get_buffer(self, sizehint: int) -> ReadableBuffer:
        if self._buffered is not None:
            return self._buffered.get_buffer(sizehint)
        return shared_buffer("gate", _CHUNK)

    def buffer_updated(self, nbytes: int) -> None:
        if self._buffered is not None:
            self._buffered.buffer_updated(nbytes)
        elif isinstance(self._inner, asyncio.Protocol):
            self._inner.data_received(shared_buffer("gate", _CHUNK)[:nbytes].tobytes())

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


async def start_protocol_listener(
    factory: Callable[[], asyncio.Protocol | asyncio.BufferedProtocol],
    host: str | None = None,
    port: int | None = None,
    *,
    max_connections: int | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """`loop.create_server` for a front end whose connections are protocols, through a `ConnectionGate`."""
    gate = ConnectionGate(max_connections)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Gated(gate, factory), **_where(host, port, sock))


async def start_admitting_listener(
    factory: Callable[[ConnectionGate], asyncio.BaseProtocol],
    host: str | None = None,
    port: int | None = None,
    *,
    max_connections: int | None = None,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """`start_protocol_listener` for a protocol that takes its place in the gate itself: `factory(gate)` makes it
    for every accepted connection; it must call `gate.admit(peer)` first in `connection_made` (aborting the
    transport, and doing nothing else, when refused) and `gate.release()` once in `connection_lost` after an
    admit (`hbone.net.relay.AcceptedPipe` does). Nothing sits between the transport and it: through `_Gated`
    each read was one or two more Python calls."""
    gate = ConnectionGate(max_connections)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: factory(gate), **_where(host, port, sock))
