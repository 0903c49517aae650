"""Loopback servers to tunnel to (echo, TLS echo, HTTP/1.1) and a tiny stdlib HTTP client that never uses a
proxy (for admin endpoints)."""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import ssl
import urllib.error
import urllib.request

from tests.peers.process import LOOPBACK

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body) for any HTTP status, raises OSError when unreachable."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def http_post(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


async def ahttp_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, url, timeout)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # mirror the half-close so tunnels see FIN pass both ways
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def start_echo_server(ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    """TCP (or TLS, given a server context) echo server on 127.0.0.1:0; returns (server, port)."""
    server = await asyncio.start_server(_echo, LOOPBACK, 0, ssl=ssl_context)
    return server, int(server.sockets[0].getsockname()[1])


async def start_tls_echo_server(ssl_context: ssl.SSLContext) -> tuple[asyncio.Server, int]:
    return await start_echo_server(ssl_context)


async def start_http_server(
    body: bytes = b"hello from the loopback backend\n",
    status: int = 200,
    content_type: str = "text/plain",
    host: str = LOOPBACK,
    port: int = 0,
) -> tuple[asyncio.Server, int]:
    """Minimal HTTP/1.1 server answering every request with a fixed body, then closing (for curl)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    server = await asyncio.start_server(handle, host, port)
    return server, int(server.sockets[0].getsockname()[1])


async def close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()
