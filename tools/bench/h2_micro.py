"""HTTP/2 driver microbenchmark: the DATA fast paths (h2tuning item 10) against h2's own per-frame code, in-process.

    .venv/bin/python tools/bench/h2_micro.py [--mib N] [--repeats N]
    .venv/bin/python tools/bench/h2_micro.py --engines [--mib N] [--tunnels N] [--repeats N]

No sockets and no TLS: one `H2Connection` (our driver) is fed or drained directly, so the figures are the
driver's own CPU per GB and are far steadier on a shared machine than the multi-process `hbone_bench.py`.

- receive: a server connection is fed 65,527-byte DATA frames (what our sender makes) in 256 KiB reads, the reads
  a TLS transport hands over; a consumer takes every chunk by callback and credits it, like `hbone serve`'s pipe.
- send: a client stream writes 64 KiB chunks to a transport that takes everything.

Each is run on the h2 engine with the fast paths (as shipped, `H2Settings.engine` "h2") and without them
("h2-stock": h2's per-frame receive path and credit bookkeeping, h2's `send_data`), alternately, `--repeats`
times; the ratio is baseline CPU ÷ fast-path CPU. The other h2 shims (quiet reprs, zero-copy frame buffer, eager
credit) stay on in both. Only public API is used: the engine is chosen by its setting, the connection is driven
through its asyncio protocol methods.

`--engines` compares the two sans-IO engines under the same driver instead (`H2Settings.engine` "h2" against
"native", fast paths on in both), alternately, on receive, send and a third case:
- churn: a server connection is fed ztunnel-like CONNECT requests, 50 at a time, each followed by the client's
  END_STREAM; the handler answers 200 and ends its side. CPU µs per tunnel of the server (driver, engine,
  handler task), the per-tunnel work of `hbone serve` without TLS, sockets or the upstream dial.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import h2.config
import h2.connection
import h2.settings

from hbone.net.connection import H2Connection
from hbone.net.h2.native_conn import NativeEngine
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream

FRAME = 65_527
CHUNK = 64 * 1024
READ = 256 * 1024
CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]
# What ztunnel sends on every tunnel (docs/hbone-spec.md): the authority, a W3C traceparent and a baggage header.
TUNNEL = [
    (b":method", b"CONNECT"),
    (b":authority", b"10.0.0.1:8080"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    (b"baggage", b"k8s.namespace.name=default,k8s.pod.name=client-7d4b9c-abcde,service.name=client"),
]
IN_FLIGHT = 50


class _Transport:
    """Takes every write; keeps the first bytes (the handshake) for the peer."""

    def __init__(self) -> None:
        self.sent = 0
        self.head = bytearray()

    def write(self, data: Any) -> None:
        self.sent += len(data)
        if len(self.head) < 65_536:
            self.head += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _feed(conn: H2Connection, data: memoryview) -> None:
    while data:
        buf = conn.get_buffer(READ)
        n = min(len(buf), READ, len(data))
        buf[:n] = data[:n]
        conn.buffer_updated(n)
        data = data[n:]


class _Sink:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.got = 0

    def stream_data(self, data: bytes) -> None:
        self.got += len(data)
        self.stream.credit(len(data))

    def stream_eof(self) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    def stream_failed(self, exc: BaseException) -> None:
        pass


def _peer_client() -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    peer.initiate_connection()
    return peer


async def receive(total: int, fast: bool, engine: str = "h2") -> float:
    """CPU seconds per GB for the server side of one stream receiving `total` bytes (`fast` False: "h2-stock")."""
    sinks: list[_Sink] = []

    async def handler(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        sink = _Sink(stream)
        sinks.append(sink)
        stream.attach(sink)
        await asyncio.Event().wait()

    settings = H2Settings.server(engine=engine if fast else "h2-stock")
    conn = H2Connection(client=False, handler=handler, settings=settings)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    peer = _peer_client()
    peer.receive_data(bytes(transport.head))
    peer.send_headers(1, [(n.encode(), v.encode()) for n, v in CONNECT])
    _feed(conn, memoryview(bytes(peer.data_to_send())))
    await asyncio.sleep(0)  # the handler answers and attaches its sink
    peer.max_outbound_frame_size = FRAME
    # Our server credits as the sink consumes; the peer need not track it for pre-built frames.
    peer.outbound_flow_control_window = 1 << 40
    peer.streams[1].outbound_flow_control_window = 1 << 40
    for _ in range(16):
        peer.send_data(1, b"x" * FRAME)
    block = memoryview(bytes(peer.data_to_send()))
    reps = max(1, total // len(block))
    cpu = time.process_time()
    for _ in range(reps):
        _feed(conn, block)
    cpu = time.process_time() - cpu
    assert sinks and sinks[0].got == reps * 16 * FRAME, "the sink did not get every byte"
    conn.connection_lost(None)
    return cpu / (reps * 16 * FRAME / 1e9)


async def send(total: int, fast: bool, engine: str = "h2") -> float:
    """CPU seconds per GB for one client stream writing `total` bytes in 64 KiB chunks (`fast` False: "h2-stock")."""
    conn = H2Connection(client=True, settings=H2Settings.client(engine=engine if fast else "h2-stock"))
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    peer.initiate_connection()
    codes = h2.settings.SettingCodes
    peer.update_settings({codes.INITIAL_WINDOW_SIZE: (1 << 31) - 1, codes.MAX_FRAME_SIZE: 1 << 20})
    peer.increment_flow_control_window((1 << 31) - 1 - 65_535)
    peer.receive_data(bytes(transport.head))
    _feed(conn, memoryview(bytes(peer.data_to_send())))
    stream = await conn.open_stream(CONNECT)
    payload = bytes(range(256)) * (CHUNK // 256)
    reps = max(1, total // CHUNK)
    before = transport.sent
    cpu = time.process_time()
    for i in range(reps):
        stream.write(payload)
        await stream.drain()
        if i % 32 == 31:
            await asyncio.sleep(0)  # let scheduled flushes run, as the loop would between reads
    await asyncio.sleep(0)
    cpu = time.process_time() - cpu
    assert transport.sent - before >= reps * CHUNK, "not every byte was written"
    return cpu / (reps * CHUNK / 1e9)


async def churn(tunnels: int, engine: str) -> float:
    """CPU µs per tunnel of a server connection handling `tunnels` CONNECT streams, IN_FLIGHT at a time."""
    done = target = 0
    batch_done = asyncio.Event()

    async def handler(stream: Stream) -> None:
        nonlocal done
        stream.send_headers([(b":status", b"200")])
        while await stream.read(65_536):
            pass
        stream.write_eof()
        done += 1
        if done >= target:
            batch_done.set()

    conn = H2Connection(client=False, handler=handler, settings=H2Settings.server(engine=engine))
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    # The requests are built beforehand (not timed) by a client engine; the server's answers are discarded.
    client = NativeEngine(client=True, settings=H2Settings.client())
    client.start()
    batches = [bytes(client.take_output())]
    for _ in range(max(1, tunnels // IN_FLIGHT)):
        for sid in [client.open_stream(TUNNEL, False) for _ in range(IN_FLIGHT)]:
            client.end_stream(sid)
        batches.append(bytes(client.take_output()))
    _feed(conn, memoryview(batches[0]))
    cpu = time.process_time()
    for i, batch in enumerate(batches[1:], 1):
        target = i * IN_FLIGHT
        batch_done.clear()
        _feed(conn, memoryview(batch))
        await batch_done.wait()
    cpu = time.process_time() - cpu
    conn.connection_lost(None)
    return cpu / done * 1e6


def _median_pair(runs: int, a: Any, b: Any) -> tuple[float, float]:
    """Medians of `runs` alternate runs of the coroutine factories `a` and `b` (drift hits both alike)."""
    a_runs: list[float] = []
    b_runs: list[float] = []
    for _ in range(runs):
        a_runs.append(asyncio.run(a()))
        b_runs.append(asyncio.run(b()))
    return statistics.median(a_runs), statistics.median(b_runs)


def engines(total: int, tunnels: int, repeats: int) -> None:
    rows = []
    for name, unit, case in (
        ("receive", "CPU-s/GB", lambda engine: receive(total, True, engine)),
        ("send", "CPU-s/GB", lambda engine: send(total, True, engine)),
        ("churn", "CPU µs/tunnel", lambda engine: churn(tunnels, engine)),
    ):
        h2, native = _median_pair(repeats, lambda case=case: case("h2"), lambda case=case: case("native"))
        rows.append(f"| {name} ({unit}) | {h2:.3f} | {native:.3f} | {h2 / native:.2f}x |")
    print(f"HTTP/2 driver on each engine, median of {repeats} alternate runs (lower is better)\n")
    print("| case | h2 engine | native engine | h2 ÷ native (speed) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=400, help="MiB per run (default 400)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", action="store_true", help="the h2 engine against the native engine")
    parser.add_argument("--tunnels", type=int, default=5000, help="tunnels per churn run (--engines; default 5000)")
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    if args.engines:
        engines(total, args.tunnels, args.repeats)
        return
    rows = []
    for name, case in (("receive", receive), ("send", send)):
        fast, slow = _median_pair(
            args.repeats, lambda case=case: case(total, True), lambda case=case: case(total, False)
        )
        rows.append(f"| {name} | {fast:.3f} | {slow:.3f} | {slow / fast:.2f}x |")
    print(f"HTTP/2 driver, one stream, {args.mib} MiB per run, median of {args.repeats} (CPU-s per GB)\n")
    print("| path | fast paths | h2's per-frame code | fast paths ÷ h2 (speed) |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
