"""The whole HTTP/2 server driver (`H2Connection`, our h2 tuning and fast DATA paths) fed arbitrary bytes after a
valid client preface, in arbitrary reads, over an in-memory transport, with an echoing application on every
stream. Documented outcomes: frames out, stream resets, GOAWAY, a closed connection. A bug is an exception out of
the protocol callbacks, an "internal error" the driver had to catch (it logs those with a traceback), an
application task still running after the connection is gone, or a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection

from hbone.errors import HboneError
from hbone.net.connection import H2Connection
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from tests.fakes import FakeTransport
from tests.fuzz.harness import Bytes, Harness, chunks, pack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_loop: asyncio.AbstractEventLoop | None = None


class _Connection(H2Connection):
    """Records what the driver logs as unexpected (exc_info: an exception that is not ours nor h2's)."""

    bugs: list[BaseException]

    def log_error(self, what: str, exc: BaseException) -> None:
        if not isinstance(exc, HboneError | h2.exceptions.H2Error):
            self.bugs.append(exc)


App = Callable[[Stream, int, list[BaseException]], Awaitable[None]]


async def _echo(stream: Stream, opts: int, bugs: list[BaseException]) -> None:
    try:
        stream.send_headers([(":status", "200")])
        while chunk := await stream.read(4096):
            if opts & 2:
                stream.reset()
                return
            await stream.send(chunk)  # echo, as a tunnel's upstream would
        stream.write_eof()
        await stream.wait_closed()
    except HboneError:
        pass
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            bugs.append(exc)
        raise


async def drive(data: bytes, app: App) -> None:
    """One server connection fed `data` (options, read sizes, then the bytes after the preface), `app` on every
    stream; raises what the driver or the application hit that is not a documented outcome."""
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    bugs: list[BaseException] = []

    async def handler(stream: Stream) -> None:
        await app(stream, opts, bugs)

    settings = H2Settings.server(ping_interval=None, max_concurrent_streams=1 + (opts >> 4))
    conn = _Connection(client=False, settings=settings, handler=handler)
    conn.bugs = bugs
    transport = FakeTransport(peername=("127.0.0.1", 1), keep=False)
    conn.connection_made(transport)
    for piece in chunks(PREFACE + b.rest(), sizes):
        if transport.closed:
            break
        view = memoryview(piece)
        while view:
            buf = conn.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            conn.buffer_updated(n)
            view = view[n:]
        await asyncio.sleep(0)  # let the application run between reads
    for _ in range(3):
        await asyncio.sleep(0)
    if opts & 1:
        conn.eof_received()
    conn.connection_lost(None)
    tasks = list(conn._router.tasks)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5)
        assert not pending, f"{len(pending)} application tasks still running after the connection was lost"
    if bugs:
        raise bugs[0]


def run_app(data: bytes, app: App) -> None:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(drive(data, app))


def run(data: bytes) -> None:
    run_app(data, _echo)


def _client(script: str) -> bytes:
    """Bytes a stock h2 client sends (after the preface, which the harness adds)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    connect = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]
    if "tunnel" in script:
        conn.send_headers(1, connect)
        conn.send_data(1, b"hello")
        conn.send_data(1, b"", end_stream=True)
    if "many" in script:
        for sid in range(3, 23, 2):
            conn.send_headers(sid, connect)
            conn.reset_stream(sid)
    if "ping" in script:
        for i in range(5):
            conn.ping(bytes([i]) * 8)
    if "window" in script:
        conn.send_headers(1, connect)
        conn.increment_flow_control_window(1 << 20)
        conn.increment_flow_control_window(1000, stream_id=1)
    if "goaway" in script:
        conn.close_connection()
    data = conn.data_to_send()
    assert data.startswith(PREFACE)
    return data[len(PREFACE) :]


def seeds() -> dict[str, bytes]:
    tunnel = _client("tunnel")
    return {
        "tunnel": pack(b"\xf0", tunnel),
        "tunnel-split": pack(b"\xf0", tunnel, bytes([1, 7, 30])),
        "tunnel-reset": pack(b"\xf2", tunnel),
        "tunnel-eof": pack(b"\xf1", tunnel),
        "rapid-reset": pack(b"\xf0", _client("many")),
        "ping": pack(b"\0", _client("ping")),
        "window": pack(b"\xf0", _client("window")),
        "goaway": pack(b"\xf0", _client("tunnel goaway")),
        "settings-only": pack(b"\0", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        "oversized-frame": pack(b"\0", b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"),
    }


HARNESS = Harness("h2_driver", run, (), seeds, max_len=8192)
