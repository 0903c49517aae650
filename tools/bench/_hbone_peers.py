"""The long-running processes of the HBONE benchmark: sink, echo, TCP relay, TLS sink, a bare HTTP/2 server
that answers 200 (h2-ok), an HTTP/2 server that is itself the sink of each tunnel stream (h2-sink), and a launcher
for the `hbone` CLI. Each runs in its own OS process (so each gets a core) until SIGTERM.

    python _hbone_peers.py [--uvloop] sink|echo|tls-sink|h2-ok|h2-sink|relay|cli ...

Our own peers print `READY <port>` on stdout once listening; `hbone serve/forward` print their own banner.

Sink protocol (shared with `_hbone_loads.py`): the client sends an 8-byte big-endian length, then that many
bytes; the sink answers one byte `K` when it has counted them all, and closes when the client closes. An
explicit ack instead of a half-close lets the same sink serve TCP, TLS (which cannot half-close) and tunnels.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hbone.net.stream import Stream

HEADER = 8
ACK = b"K"
READ_BUFFER = 256 * 1024


class Counter:
    """The sink protocol's receiving side: counts length-prefixed messages; `feed` returns how many completed."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining: int | None = None  # None while reading a header

    def feed(self, view: memoryview) -> int:
        done = 0
        while view:
            if self._remaining is None:
                take = HEADER - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < HEADER:
                    return done
                self._remaining = int.from_bytes(self._header, "big")
                self._header.clear()
            else:
                take = min(self._remaining, len(view))
                self._remaining -= take
                view = view[take:]
            if self._remaining == 0:
                done += 1
                self._remaining = None
        return done


class Sink(asyncio.BufferedProtocol):
    """Counts length-prefixed messages and acks each; one reused receive buffer (no per-read allocation)."""

    def __init__(self) -> None:
        self._buf = memoryview(bytearray(READ_BUFFER))
        self._counter = Counter()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport
        _nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        acks = self._counter.feed(self._buf[:nbytes])
        if acks:
            assert self._transport is not None
            self._transport.write(ACK * acks)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class Echo(asyncio.Protocol):
    """Writes back whatever arrives (1 KiB request/response latency); closes after the client's FIN."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)

    def eof_received(self) -> bool:
        return False


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on
    except OSError:
        writer.transport.abort()


def relay_handler(host: str, port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A plain asyncio streams relay (the same I/O style as `hbone.net.splice` on its TCP side)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            _nodelay(w.transport)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    return handle


async def _answer_ok(stream: Stream) -> None:
    """h2-ok: answer 200 at once and read to END_STREAM; no upstream dial, no authorization, no access log.

    Tunnel churn against it measures the HTTP/2 driver and pool alone (the driver ends our side on return).
    """
    stream.send_headers([(":status", "200")])
    while await stream.read(65536):
        pass


class StreamSink:
    """h2-sink: the sink protocol on the tunnel stream itself, taken by callback (`Stream.attach`) as the TLS sink
    takes TLS records, and credited as consumed. One TLS connection, one stream, two processes: the like-for-like
    counterpart of `tls-N` (RESULTS-hbone.md)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.counter = Counter()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stream_data(self, data: bytes) -> None:
        acks = self.counter.feed(memoryview(data))
        self.stream.credit(len(data))
        if acks:
            self.stream.write(ACK * acks)

    def stream_eof(self) -> None:
        self.stream.write_eof()

    def stream_closed(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def stream_failed(self, exc: BaseException) -> None:
        self.stream_closed()


async def _sink_stream(stream: Stream) -> None:
    stream.send_headers([(":status", "200")])
    sink = StreamSink(stream)
    stream.attach(sink)
    await sink.done


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server: asyncio.Server
    if args.role == "sink":
        server = await loop.create_server(Sink, "127.0.0.1", 0)
    elif args.role == "echo":
        server = await loop.create_server(Echo, "127.0.0.1", 0)
    elif args.role in ("tls-sink", "h2-ok", "h2-sink"):
        # Exactly the TLS configuration of the HBONE listener (TLS 1.3, mTLS, same certificate).
        from hbone.identity.bundle import load_bundle
        from hbone.identity.manager import IdentityManager
        from hbone.net.endpoints import serve as h2_serve
        from hbone.tls import MeshTls

        ctx = MeshTls(IdentityManager.fixed(load_bundle(args.certs))).server_context()
        if args.role == "tls-sink":
            server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=ctx)
        else:
            server = await h2_serve(_answer_ok if args.role == "h2-ok" else _sink_stream, "127.0.0.1", 0, ssl=ctx)
    else:
        host, port = _split(args.to)
        server = await asyncio.start_server(relay_handler(host, port), "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def _default_engine(engine: str) -> None:
    """Make `engine` the default of every H2Settings this process builds (a benchmark of an engine the CLIs cannot
    select yet); settings that name an engine keep theirs."""
    import dataclasses

    from hbone.net.settings import H2Settings

    names = {f.name for f in dataclasses.fields(H2Settings)}
    if "engine" not in names:
        raise SystemExit(f"--h2-engine: this hbone has no H2Settings.engine (fields: {sorted(names)})")
    init = H2Settings.__init__

    def with_engine(self: H2Settings, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("engine", engine)
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    H2Settings.__init__ = with_engine  # type: ignore[method-assign]
    H2Settings()  # fail now, with the engine's own message, if the name is not one


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uvloop", action="store_true", help="run the event loop on uvloop")
    parser.add_argument("--h2-engine", help="cli: the default HTTP/2 engine of H2Settings (e.g. native)")
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("sink")
    sub.add_parser("echo")
    sub.add_parser("tls-sink").add_argument("--certs", type=Path, required=True)
    sub.add_parser("h2-ok").add_argument("--certs", type=Path, required=True)
    sub.add_parser("h2-sink").add_argument("--certs", type=Path, required=True)
    sub.add_parser("relay").add_argument("--to", required=True, help="upstream HOST:PORT")
    sub.add_parser("cli").add_argument("argv", nargs=argparse.REMAINDER, help="arguments of `hbone`")
    args = parser.parse_args(argv)
    if args.role == "cli":
        # The hbone CLI picks uvloop itself when installed; the asyncio runs opt out so both loops are measured.
        if not args.uvloop:
            os.environ["HBONE_NO_UVLOOP"] = "1"
        if args.h2_engine:
            _default_engine(args.h2_engine)
        from hbone.cli import main as hbone_main

        return int(hbone_main(args.argv))
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
