"""A recording relay: accepts (TCP or TLS), connects to a plaintext upstream, relays both ways and keeps every
byte of each direction, so a test can look at exactly what a foreign HTTP/2 stack put on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from tests.peers.process import LOOPBACK

MAX_RECORD = 1 << 20  # per direction; a test capture, never a bulk transfer


@dataclass
class Recording:
    client_to_server: bytearray = field(default_factory=bytearray)
    server_to_client: bytearray = field(default_factory=bytearray)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, into: bytearray) -> None:
    try:
        while data := await reader.read(65536):
            if len(into) < MAX_RECORD:
                into += data[: MAX_RECORD - len(into)]
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_recorder(
    upstream_port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, int, list[Recording]]:
    """Listen on 127.0.0.1:0; each connection is relayed to 127.0.0.1:upstream_port and recorded (in order)."""
    recordings: list[Recording] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Recording()
        recordings.append(rec)
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pump(reader, up_writer, rec.client_to_server), _pump(up_reader, writer, rec.server_to_client)
        )

    server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=ssl_context)
    return server, int(server.sockets[0].getsockname()[1]), recordings
