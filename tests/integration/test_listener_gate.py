"""`hbone.proxy.listener` on loopback: both listener shapes admit exactly their cap, close the rest at accept
(counted), hand every slot back when connections end, and take the process default from `set_max_connections`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hbone import limits
from hbone.errors import ConfigError
from hbone.proxy import listener
from hbone.proxy.listener import (
    ConnectionGate,
    set_max_connections,
    start_admitting_listener,
    start_listener,
    start_protocol_listener,
)

pytestmark = pytest.mark.timeout(30)


#: One item per connection a server side saw end. The gate gives the slot back before the item is seen: right
#: after the stream handler returns (same task step), before the protocol's connection_lost runs.
ENDED: asyncio.Queue[None]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close after the client's FIN

    def connection_lost(self, exc: Exception | None) -> None:
        ENDED.put_nowait(None)


class AdmittingEcho(Echo):
    """Takes its listener place itself, as `AcceptedPipe` does (`start_admitting_listener`)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate: ConnectionGate | None = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.gate is not None and not self.gate.admit(transport.get_extra_info("peername")):
            self.gate = None
            transport.abort()  # type: ignore[attr-defined]
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        gate, self.gate = self.gate, None
        if gate is None:
            return  # refused at accept: it never counted as served
        gate.release()
        super().connection_lost(exc)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()
    finally:
        ENDED.put_nowait(None)


Starter = Callable[[int], Awaitable[asyncio.Server]]
STARTERS: dict[str, Starter] = {
    "stream": lambda cap: start_listener(echo_handler, "127.0.0.1", 0, max_connections=cap),
    "protocol": lambda cap: start_protocol_listener(Echo, "127.0.0.1", 0, max_connections=cap),
    "admitting": lambda cap: start_admitting_listener(AdmittingEcho, "127.0.0.1", 0, max_connections=cap),
}


@contextlib.asynccontextmanager
async def listening(kind: str, cap: int) -> AsyncIterator[int]:
    global ENDED
    ENDED = asyncio.Queue()
    server = await STARTERS[kind](cap)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def ended(count: int) -> None:
    async with asyncio.timeout(10):
        for _ in range(count):
            await ENDED.get()


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """True when the connection echoes; False when the server closed it."""
    writer.write(b"x")
    try:
        return await asyncio.wait_for(reader.read(1), 10) == b"x"
    except ConnectionError:
        return False


@pytest.mark.parametrize("kind", sorted(STARTERS))
async def test_cap_admits_exactly_the_cap_and_releases(kind: str) -> None:
    tunnels_before = limits.TUNNELS.in_use
    trips_before = limits.trip_counts()["max_connections"]
    async with listening(kind, 2) as port:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert [await echoes(*c) for c in conns] == [True, True, False]
        assert limits.trip_counts()["max_connections"] == trips_before + 1
        assert limits.TUNNELS.in_use == tunnels_before + 2
        conns[0][1].close()  # a slot frees once the server saw the connection end
        await ended(1)
        assert limits.TUNNELS.in_use == tunnels_before + 1
        late = await asyncio.open_connection("127.0.0.1", port)
        assert await echoes(*late)
        for _, w in [*conns[1:], late]:
            w.close()
        await ended(2)
        assert limits.TUNNELS.in_use == tunnels_before


async def test_listener_on_a_prepared_socket() -> None:
    """TPROXY hands us a socket it made (IP_TRANSPARENT); the gate applies to it the same way."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    global ENDED
    ENDED = asyncio.Queue()
    server = await start_listener(echo_handler, sock=sock, max_connections=1)
    try:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        assert await echoes(*first) and not await echoes(*second)
        first[1].close()
        second[1].close()
    finally:
        server.close()
        await server.wait_closed()


def test_process_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "_default_cap", listener.MAX_CONNECTIONS)
    assert ConnectionGate().limit == 8192
    set_max_connections(7)
    assert ConnectionGate().limit == 7 and ConnectionGate(3).limit == 3
    with pytest.raises(ConfigError, match=r"^--max-connections 0: must be at least 1$"):
        set_max_connections(0)
