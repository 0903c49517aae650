"""Load generators of the HBONE benchmark; one case per process, one JSON line of results on stdout.

    python _hbone_loads.py [--uvloop] bulk-tcp|bulk-tls|bulk-hbone|latency|churn|handshake ...

Timing and CPU (getrusage of this process) cover only the measured part: connections, TLS handshakes and
tunnels are set up before the clock starts in the bulk cases. Plain TCP clients use blocking sockets (threads
for parallel streams) so the client costs the shared 2 cores as little as possible; it is the same client for
every TCP entry point (direct, Python relay, socat, `hbone forward`), so the ratios compare the middle only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from _hbone_peers import ACK, HEADER

CHUNK = 64 * 1024
PAYLOAD = bytes(range(256)) * (CHUNK // 256)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _mesh_tls(certs: Path) -> Any:
    from hbone.identity.bundle import load_bundle
    from hbone.identity.manager import IdentityManager
    from hbone.tls import MeshTls

    return MeshTls(IdentityManager.fixed(load_bundle(certs)))


def _chunks(total: int) -> tuple[int, int]:
    return divmod(total, CHUNK)


# --- bulk throughput -------------------------------------------------------------------------------------------


def bulk_tcp(address: str, streams: int, total: int) -> dict[str, Any]:
    host, port = _split(address)
    per = total // streams
    socks = [socket.create_connection((host, port)) for _ in range(streams)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    errors: list[BaseException] = []
    start = threading.Barrier(streams + 1)

    def send(s: socket.socket) -> None:
        try:
            start.wait()
            full, rest = _chunks(per)
            s.sendall(per.to_bytes(HEADER, "big"))
            for _ in range(full):
                s.sendall(PAYLOAD)
            s.sendall(PAYLOAD[:rest])
            if s.recv(1) != ACK:
                raise ConnectionError("sink did not acknowledge")
        except BaseException as e:  # reported in the result, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=send, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    cpu0, t0 = _cpu(), time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    for s in socks:
        s.close()
    if errors:
        raise errors[0]
    return {"bytes": per * streams, "wall": wall, "cpu": cpu}


async def _send_all(write: Callable[[bytes], None], drain: Callable[[], Awaitable[None]], per: int) -> None:
    full, rest = _chunks(per)
    write(per.to_bytes(HEADER, "big"))
    for _ in range(full):
        write(PAYLOAD)
        await drain()
    if rest:
        write(PAYLOAD[:rest])
    await drain()


async def bulk_tls(address: str, streams: int, total: int, certs: Path) -> dict[str, Any]:
    host, port = _split(address)
    ctx = _mesh_tls(certs).client_context()
    per = total // streams
    conns = [await asyncio.open_connection(host, port, ssl=ctx, server_hostname="") for _ in range(streams)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send_all(writer.write, writer.drain, per)
        if await reader.readexactly(1) != ACK:
            raise ConnectionError("sink did not acknowledge")

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(one(r, w) for r, w in conns))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    for _, w in conns:
        w.close()
    return {"bytes": per * streams, "wall": wall, "cpu": cpu}


async def bulk_hbone(via: str, target: str, streams: int, total: int, certs: Path) -> dict[str, Any]:
    from hbone.client import Endpoint, HboneClient

    client = HboneClient(_mesh_tls(certs))
    ep = Endpoint.parse(via)
    per = total // streams
    try:
        tunnels = [await client.open(target, ep) for _ in range(streams)]

        async def one(t: Any) -> None:
            await _send_all(t.write, t.drain, per)
            if await t.read(1) != ACK:
                raise ConnectionError("sink did not acknowledge")

        cpu0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(*(one(t) for t in tunnels))
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        for t in tunnels:
            t.write_eof()
        stats = client.pool.stats()
    finally:
        await client.close()
    return {"bytes": per * streams, "wall": wall, "cpu": cpu, "connections": stats["dials"]}


# --- latency -----------------------------------------------------------------------------------------------------


def latency(address: str, count: int, size: int, warmup: int) -> dict[str, Any]:
    host, port = _split(address)
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = bytes(size)
    buf = bytearray(size)
    view = memoryview(buf)
    samples: list[int] = []
    cpu0, t0 = _cpu(), time.perf_counter()
    for i in range(warmup + count):
        start = time.perf_counter_ns()
        s.sendall(msg)
        got = 0
        while got < size:
            n = s.recv_into(view[got:])
            if not n:
                raise ConnectionError("echo closed the connection")
            got += n
        if i >= warmup:
            samples.append(time.perf_counter_ns() - start)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    s.close()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000.0

    return {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": samples[-1] / 1000.0, "n": count,
            "wall": wall, "cpu": cpu}  # fmt: skip


# --- tunnel churn and handshakes -----------------------------------------------------------------------------------


async def _for_duration(op: Callable[[], Awaitable[None]], parallel: int, seconds: float) -> dict[str, Any]:
    """Run `op` from `parallel` workers until `seconds` pass; ops/s over the measured wall time."""
    done = errors = 0
    first_error = ""
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors, first_error
        while time.perf_counter() < deadline:
            try:
                await op()
                done += 1
            except Exception as e:  # counted and reported: a benchmark must not hide failures
                errors += 1
                first_error = first_error or repr(e)

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {"ops": done, "rate": done / wall, "errors": errors, "first_error": first_error, "wall": wall, "cpu": cpu}


async def churn(via: str, target: str, parallel: int, seconds: float, certs: Path) -> dict[str, Any]:
    from hbone.client import Endpoint, HboneClient

    client = HboneClient(_mesh_tls(certs))
    ep = Endpoint.parse(via)

    async def op() -> None:
        # open (CONNECT -> 200 after the server dialled the sink), half-close, read to the server's END_STREAM
        t = await client.open(target, ep)
        t.write_eof()
        while await t.read(65536):
            pass

    try:
        await op()  # dial the pooled connection before the clock starts
        result = await _for_duration(op, parallel, seconds)
        result["connections"] = client.pool.stats()["dials"]
    finally:
        await client.close()
    return result


async def handshake(kind: str, address: str, parallel: int, seconds: float, certs: Path) -> dict[str, Any]:
    from hbone.net.endpoints import connect
    from hbone.tls import check_server_peer

    host, port = _split(address)
    ctx: ssl.SSLContext = _mesh_tls(certs).client_context()

    async def hbone_op() -> None:
        # what the pool's dial does: TLS + HTTP/2 preface, SAN check; close() waits for the server's SETTINGS
        conn = await connect(host, port, ssl=ctx, server_hostname="")
        check_server_peer(conn.ssl_object, ())
        await conn.close()

    async def tls_op() -> None:
        # one empty message and its ack: a round trip after the handshake, as HBONE waits for SETTINGS
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
        writer.write(bytes(HEADER))
        await reader.readexactly(1)
        writer.close()
        await writer.wait_closed()

    return await _for_duration(hbone_op if kind == "hbone" else tls_op, parallel, seconds)


# --- entry point ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uvloop", action="store_true")
    sub = parser.add_subparsers(dest="case", required=True)
    for name in ("bulk-tcp", "bulk-tls", "bulk-hbone"):
        p = sub.add_parser(name)
        p.add_argument("address", help="where to connect (HBONE server for bulk-hbone)")
        p.add_argument("--streams", type=int, default=1)
        p.add_argument("--bytes", type=int, required=True, help="total over all streams")
        p.add_argument("--target", help="bulk-hbone: the sink as the HBONE server reaches it")
        p.add_argument("--certs", type=Path)
    p = sub.add_parser("latency")
    p.add_argument("address")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--size", type=int, default=1024)
    p = sub.add_parser("churn")
    p.add_argument("address")
    p.add_argument("--target", required=True)
    p.add_argument("--parallel", type=int, default=50)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--certs", type=Path, required=True)
    p = sub.add_parser("handshake")
    p.add_argument("kind", choices=["hbone", "tls"])
    p.add_argument("address")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--certs", type=Path, required=True)
    a = parser.parse_args(argv)

    def run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        if a.uvloop:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return asyncio.run(coro)

    if a.case == "bulk-tcp":
        result = bulk_tcp(a.address, a.streams, a.bytes)
    elif a.case == "bulk-tls":
        result = run(bulk_tls(a.address, a.streams, a.bytes, a.certs))
    elif a.case == "bulk-hbone":
        result = run(bulk_hbone(a.address, a.target, a.streams, a.bytes, a.certs))
    elif a.case == "latency":
        result = latency(a.address, a.count, a.size, a.warmup)
    elif a.case == "churn":
        result = run(churn(a.address, a.target, a.parallel, a.seconds, a.certs))
    else:
        result = run(handshake(a.kind, a.address, a.parallel, a.seconds, a.certs))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
