"""Listener limits of the HBONE server on loopback: TLS handshake, preface and idle timeouts, the connection cap,
the process-wide tunnel cap and the self-call guard on the ports really bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hbone import limits
from hbone.errors import ConnectionLost, H2ErrorCode
from hbone.net.endpoints import connect
from hbone.net.settings import H2Settings
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def server(**kwargs: object) -> AsyncIterator[tuple[HboneServer, int, int]]:
    settings = kwargs.pop("settings", None)
    tls = TestCA().mesh_tls("ns", "bob")
    srv = HboneServer(tls, InboundHandler(InboundConfig(tls=tls)), settings=settings, **kwargs)  # type: ignore[arg-type]
    _, port = await srv.listen("127.0.0.1", 0)
    _, h2c = await srv.listen("127.0.0.1", 0, plaintext=True)
    try:
        yield srv, port, h2c
    finally:
        await srv.close()


async def closed_by_peer(port: int, send: bytes = b"") -> bytes:
    """Connect, send `send`, then read until the server closes; returns what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(send)
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 20):
            got += chunk
    except ConnectionResetError:
        pass
    writer.close()
    return got


async def connect_status(port: int, target: str) -> int:
    conn = await connect("127.0.0.1", port, settings=H2Settings.client(ping_interval=None))
    try:
        stream = await conn.open_stream([(":method", "CONNECT"), (":authority", target)])
        headers = await asyncio.wait_for(stream.response_headers(), 20)
        return int(dict(headers)[b":status"])
    finally:
        await conn.close()


async def test_tls_handshake_timeout_closes_silent_clients() -> None:
    async with server(handshake_timeout=0.5) as (_, port, _h2c):
        # asyncio's own default is 60 s: closing within 30 s proves our 10 s default (0.5 s here) is applied.
        assert await asyncio.wait_for(closed_by_peer(port), 30) == b""


async def test_preface_timeout_closes_clients_that_send_nothing() -> None:
    before = limits.trip_counts()["preface_timeout"]
    async with server(settings=H2Settings.server(preface_timeout=0.5)) as (_, _port, h2c):
        got = await asyncio.wait_for(closed_by_peer(h2c), 30)
    assert got  # our SETTINGS and a GOAWAY, then the close
    assert limits.trip_counts()["preface_timeout"] == before + 1


async def test_idle_connection_gets_goaway() -> None:
    async with server(settings=H2Settings.server(idle_timeout=0.5)) as (_, _port, h2c):
        conn = await connect("127.0.0.1", h2c, settings=H2Settings.client(ping_interval=None))
        await asyncio.wait_for(conn.wait_closed(), 30)
        assert conn.goaway_received is not None and conn.goaway_received[0] == H2ErrorCode.NO_ERROR


async def test_connection_cap_refuses_with_enhance_your_calm() -> None:
    async with server(max_connections=1) as (srv, _port, h2c):
        first = await connect("127.0.0.1", h2c, settings=H2Settings.client(ping_interval=None))
        try:
            try:  # the GOAWAY may arrive with the server's SETTINGS (connect raises) or just after
                second = await connect("127.0.0.1", h2c, settings=H2Settings.client(ping_interval=None))
            except ConnectionLost as exc:
                assert "ENHANCE_YOUR_CALM" in str(exc)
            else:
                await asyncio.wait_for(second.wait_closed(), 30)
                assert second.goaway_received is not None
                assert second.goaway_received[0] == H2ErrorCode.ENHANCE_YOUR_CALM
            for _ in range(300):  # the refused one lingers up to 1 s so that its GOAWAY is read
                if len(srv.connections) == 1:
                    break
                await asyncio.sleep(0.01)
            assert first.is_usable and len(srv.connections) == 1
        finally:
            await first.close()


async def test_self_call_to_the_port_really_bound_is_refused() -> None:
    before = limits.trip_counts()["self_call"]
    async with server() as (_, port, h2c):
        assert port not in (15008, 15006, 15001)
        assert await connect_status(h2c, f"127.0.0.1:{port}") == 503
        assert await connect_status(h2c, f"127.0.0.1:{h2c}") == 503
    assert limits.trip_counts()["self_call"] == before + 2


async def test_process_tunnel_cap_refuses_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    echo, echo_port = await start_echo_server()
    try:
        async with server() as (_, _port, h2c):
            assert await connect_status(h2c, f"127.0.0.1:{echo_port}") == 200
            monkeypatch.setattr(limits.TUNNELS, "limit", 0)
            assert await connect_status(h2c, f"127.0.0.1:{echo_port}") == 503
            monkeypatch.setattr(limits.PENDING_DIALS, "limit", 0)
            monkeypatch.setattr(limits.TUNNELS, "limit", 1000)
            assert await connect_status(h2c, f"127.0.0.1:{echo_port}") == 503
    finally:
        echo.close()
