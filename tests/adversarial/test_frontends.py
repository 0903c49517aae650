"""`hbone socks5` and `hbone http-proxy` (real processes) under garbage, idle and slowloris clients: both survive,
their RSS stays bounded, they close every such connection within the handshake timeout (10 s) while the clients
still hold their sockets open, and a legitimate client started during the attack gets its tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest

from hbone.testing import start_echo_server
from tests.adversarial.harness import HBONE, Target, check_bounds, process

pytestmark = pytest.mark.timeout(90)


async def socks5_client(port: int, echo_port: int) -> None:
    async def run() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + echo_port.to_bytes(2, "big"))
        assert (await reader.readexactly(10))[1] == 0  # SUCCEEDED
        payload = os.urandom(32 * 1024)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()

    await asyncio.wait_for(run(), 30)


async def http_client(port: int, echo_port: int) -> None:
    async def run() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: 127.0.0.1:{echo_port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        payload = os.urandom(32 * 1024)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()

    await asyncio.wait_for(run(), 30)


async def attack(target: Target, legit: Callable[[], Awaitable[None]], first_bytes: bytes) -> None:
    port = target.ports[0]
    base_rss, base_fds = target.rss(), target.fds()
    held: list[asyncio.StreamWriter] = []
    async with target.watched():
        for _ in range(50):  # garbage: refused at once
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"\x16\x03\x01garbage\r\n\r\n" * 10)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(r.read(), 20)
            w.transport.abort()
        for first in (b"", first_bytes):  # idle, and a request that never completes (slowloris)
            for _ in range(150):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(first)
                held.append(w)
        await legit()
        assert await target.settled_fds(base_fds, timeout=40) <= base_fds + 12  # closed by the server
    for w in held:
        w.transport.abort()
    check_bounds(target, base_rss, base_fds, f"{target.stderr[0].split()[1]} garbage + idle + slowloris")


async def test_socks5_and_http_proxy_under_garbage_idle_and_slowloris() -> None:
    echo, echo_port = await start_echo_server()
    try:
        ready = r"listening 127\.0\.0\.1:(\d+)"
        async with (
            process([*HBONE, "socks5", "--listen", "127.0.0.1:0", "--direct"], ready, 1) as socks,
            process([*HBONE, "http-proxy", "--listen", "127.0.0.1:0", "--direct"], ready, 1) as http,
        ):
            await socks5_client(socks.ports[0], echo_port)  # warm up
            await http_client(http.ports[0], echo_port)
            await asyncio.gather(
                attack(socks, lambda: socks5_client(socks.ports[0], echo_port), b"\x05\x01"),
                attack(http, lambda: http_client(http.ports[0], echo_port), b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n"),
            )
    finally:
        echo.close()
