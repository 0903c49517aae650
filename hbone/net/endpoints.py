"""Opening HTTP/2 connections: `connect()` dials a client connection (h2c or TLS), `serve()` listens.

The two entry points around `hbone.net.connection.H2Connection` for code that wants a bare HTTP/2 connection (gRPC
wire tests, benchmarks, the adversarial harness); HBONE callers go through `hbone.client` and `hbone.server`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
from typing import Any

from hbone.errors import ConnectionLost
from hbone.net.connection import H2Connection
from hbone.net.events import StreamHandler
from hbone.net.settings import H2Settings

__all__ = ["connect", "serve"]


async def connect(
    host: str | None = None,
    port: int | None = None,
    *,
    ssl: _ssl.SSLContext | None = None,
    settings: H2Settings | None = None,
    server_hostname: str | None = None,
    sock: socket.socket | None = None,
    connect_timeout: float = 10.0,
) -> H2Connection:
    """Open a client connection: h2c when `ssl` is None, else TLS (the context must offer ALPN h2).

    `server_hostname=""` disables SNI, as ztunnel does (docs/hbone-spec.md §1).
    """
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {"ssl": ssl}
    if sock is not None:
        kwargs["sock"] = sock
    else:
        kwargs["host"], kwargs["port"] = host, port
    if ssl is not None and server_hostname is not None:
        kwargs["server_hostname"] = server_hostname

    def factory() -> H2Connection:
        return H2Connection(client=True, settings=settings)

    try:
        _, conn = await asyncio.wait_for(loop.create_connection(factory, **kwargs), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionLost(f"cannot connect to {host}:{port}: {exc!r}") from exc
    failure = conn.setup_error
    if failure is not None:
        raise failure
    return conn


async def serve(
    handler: StreamHandler,
    host: str | None,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    settings: H2Settings | None = None,
    registry: set[H2Connection] | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """Listen for HTTP/2 connections; `handler(stream)` runs as a task per request stream."""
    loop = asyncio.get_running_loop()
    factory = H2Connection.server_factory(handler, settings, registry)
    return await loop.create_server(factory, host, port, ssl=ssl, **kwargs)
