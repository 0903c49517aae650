"""A plain HTTP/2 test listener on our `hbone.net` stack: every request gets `200` and a short body.

h2spec (and any other generic HTTP/2 client) needs a server that answers `GET /` and `POST /` like a web server;
our product listeners answer only CONNECT/gRPC. This serves the same `H2Connection` driver with a trivial
application, over h2c or TLS without client certificates (h2spec has no client-certificate flags).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from hbone.errors import HboneError
from hbone.net.connection import H2Connection
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from tests.peers.process import LOOPBACK

BODY = b"hello from hbone.net\n"
MAX_BODY = 1 << 20


async def answer(stream: Stream) -> None:
    """Read the request body (bounded), then `200` with `BODY`."""
    got = 0
    try:
        while chunk := await stream.read():
            got += len(chunk)
            if got > MAX_BODY:
                stream.reset()
                return
        stream.send_headers([(":status", "200"), ("content-type", "text/plain"), ("content-length", str(len(BODY)))])
        stream.write(BODY)
        stream.write_eof()
    except HboneError:
        stream.reset()


async def start_h2_app(
    ssl_context: ssl.SSLContext | None = None, engine: str | None = None
) -> tuple[asyncio.Server, int]:
    """Listen on 127.0.0.1:0 (h2c, or TLS with ALPN h2 given a server context), on the default HTTP/2 engine or
    the one named; returns (server, port)."""
    registry: set[H2Connection] = set()
    settings = H2Settings.server() if engine is None else H2Settings.server(engine=engine)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: H2Connection(client=False, settings=settings, handler=answer, registry=registry),
        LOOPBACK,
        0,
        ssl=ssl_context,
    )
    sock: Any = server.sockets[0].getsockname()
    return server, int(sock[1])


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server-auth TLS with ALPN h2 and no client certificate requested."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx
