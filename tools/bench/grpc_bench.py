#!/usr/bin/env python3
"""gRPC benchmark: our raw gRPC (hbone.grpc) vs grpcio (aio server + client) vs grpclib, in one run.

    tools/bench/grpc_bench.py [--quick] [--loop asyncio|uvloop|both] [--impl ours,grpcio,grpclib] [--repeat N]

Cases, each over h2c on loopback with raw-bytes messages (no protobuf cost in any implementation):
- unary-1:   unary ping-pong, one call in flight              -> calls/s
- unary-16:  unary calls, 16 in flight on one channel          -> calls/s
- stream:    server-streaming, 10k messages per call          -> messages/s

Server and client run as separate processes (one core each, docs/performance.md "Method").
Every case runs --repeat times; the table shows min/median/max, each process's CPU seconds per 1k operations,
and ratios of the medians (ours / grpclib, ours / grpcio), all taken in this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

IMPLS = ("ours", "grpcio", "grpclib")
CASES = ("unary-1", "unary-16", "stream")
UNARY = "/bench.B/Unary"
STREAM = "/bench.B/Stream"
STREAM_BATCH = 10_000


# --- servers ---------------------------------------------------------------------------------------------------


async def serve_ours(port: int) -> None:
    from hbone.grpc.codec import RawCodec
    from hbone.grpc.server import GrpcServer, ServerCall

    raw = RawCodec()
    server = GrpcServer()

    async def unary(request: bytes, call: ServerCall) -> bytes:
        return request

    async def stream(request: bytes, call: ServerCall) -> Any:
        count, payload = int.from_bytes(request[:4], "big"), request[4:]
        for _ in range(count):
            yield payload

    server.add_unary(UNARY, unary, raw, raw)
    server.add_server_stream(STREAM, stream, raw, raw)
    await server.listen("127.0.0.1", port)
    await asyncio.Event().wait()


async def serve_grpcio(port: int) -> None:
    import grpc

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> Any:
        count, payload = int.from_bytes(request[:4], "big"), request[4:]
        for _ in range(count):
            yield payload

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.B", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _grpclib_codec() -> Any:
    from grpclib.encoding.base import CodecBase

    class Raw(CodecBase):  # type: ignore[misc]
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    return Raw()


async def serve_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    class Service:
        async def unary(self, stream: Any) -> None:
            await stream.send_message(await stream.recv_message())

        async def stream(self, stream: Any) -> None:
            request = await stream.recv_message()
            count, payload = int.from_bytes(request[:4], "big"), request[4:]
            for _ in range(count):
                await stream.send_message(payload)

        def __mapping__(self) -> dict[str, Any]:
            return {
                UNARY: Handler(self.unary, Cardinality.UNARY_UNARY, None, None),
                STREAM: Handler(self.stream, Cardinality.UNARY_STREAM, None, None),
            }

    server = Server([Service()], codec=_grpclib_codec())
    await server.start("127.0.0.1", port)
    await server.wait_closed()


SERVERS: dict[str, Callable[[int], Awaitable[None]]] = {
    "ours": serve_ours,
    "grpcio": serve_grpcio,
    "grpclib": serve_grpclib,
}


# --- clients: each returns (unary call, stream call) coroutines functions and a closer --------------------------


async def client_ours(port: int) -> tuple[Any, Any, Any]:
    from hbone.grpc.client import Channel

    ch = Channel(f"127.0.0.1:{port}")

    async def unary(payload: bytes) -> bytes:
        return await ch.unary(UNARY, payload)  # type: ignore[no-any-return]

    async def stream(request: bytes) -> int:
        n = 0
        async for _ in ch.server_stream(STREAM, request):
            n += 1
        return n

    return unary, stream, ch.close


async def client_grpcio(port: int) -> tuple[Any, Any, Any]:
    import grpc

    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    u = ch.unary_unary(UNARY)
    s = ch.unary_stream(STREAM)

    async def unary(payload: bytes) -> bytes:
        return await u(payload)  # type: ignore[no-any-return]

    async def stream(request: bytes) -> int:
        n = 0
        async for _ in s(request):
            n += 1
        return n

    return unary, stream, ch.close


async def client_grpclib(port: int) -> tuple[Any, Any, Any]:
    from grpclib.client import Channel, UnaryStreamMethod, UnaryUnaryMethod

    ch = Channel("127.0.0.1", port, codec=_grpclib_codec())
    u = UnaryUnaryMethod(ch, UNARY, bytes, bytes)
    s = UnaryStreamMethod(ch, STREAM, bytes, bytes)

    async def unary(payload: bytes) -> bytes:
        return await u(payload)  # type: ignore[no-any-return]

    async def stream(request: bytes) -> int:
        n = 0
        async with s.open() as call:
            await call.send_message(request, end=True)
            async for _ in call:
                n += 1
        return n

    async def close() -> None:
        ch.close()

    return unary, stream, close


CLIENTS = {"ours": client_ours, "grpcio": client_grpcio, "grpclib": client_grpclib}


async def run_client(impl: str, port: int, case: str, duration: float, size: int) -> dict[str, float]:
    unary, stream, close = await CLIENTS[impl](port)
    payload = b"x" * size
    loop = asyncio.get_running_loop()
    inflight = 16 if case == "unary-16" else 1
    ops = 0

    async def worker(until: float) -> None:
        nonlocal ops
        if case == "stream":
            request = STREAM_BATCH.to_bytes(4, "big") + payload
            while loop.time() < until:
                ops += await stream(request)
        else:
            while loop.time() < until:
                await unary(payload)
                ops += 1

    try:
        await asyncio.gather(*(worker(loop.time() + min(0.5, duration / 4)) for _ in range(inflight)))  # warm up
        ops = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(loop.time() + duration) for _ in range(inflight)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await close()
    return {"rate": ops / wall, "client_cpu_per_k": 1000 * cpu / max(ops, 1), "ops": ops, "wall": wall}


# --- orchestration ---------------------------------------------------------------------------------------------


def run_loop(loop_name: str, main: Callable[[], Awaitable[Any]]) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not come up")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def bench(impl: str, loop_name: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    port = free_port()
    me = os.path.abspath(__file__)
    server = subprocess.Popen([sys.executable, me, "--serve", impl, "--port", str(port), "--loop", loop_name])
    results: dict[str, list[dict[str, float]]] = {}
    try:
        wait_port(port, server)
        for case in args.cases:
            for _ in range(args.repeat):
                cpu0 = proc_cpu(server.pid)
                out = subprocess.run(
                    [sys.executable, me, "--client", impl, "--port", str(port), "--loop", loop_name,
                     "--case", case, "--duration", str(args.duration), "--size", str(args.size)],
                    check=True, capture_output=True, text=True, timeout=args.duration * 4 + 30,
                )  # fmt: skip
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res["server_cpu_per_k"] = 1000 * (proc_cpu(server.pid) - cpu0) / max(res["ops"], 1)
                results.setdefault(case, []).append(res)
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return results


Table = dict[str, dict[str, list[dict[str, float]]]]


def report(loop_name: str, table: Table, impls: list[str], cases: list[str]) -> None:
    print(f"\n== event loop: {loop_name} ==")
    cols = ("median/s", "min", "max")
    print(
        f"{'case':<10} {'impl':<8} "
        + " ".join(f"{c:>10}" for c in cols)
        + f" {'srv cpu ms/1k':>14} {'cli cpu ms/1k':>14}"
    )
    medians: dict[tuple[str, str], float] = {}
    for case in cases:
        for impl in impls:
            runs = table.get(impl, {}).get(case, [])
            if not runs:
                continue
            rates = [r["rate"] for r in runs]
            med = statistics.median(rates)
            medians[(case, impl)] = med
            srv = statistics.median(r["server_cpu_per_k"] for r in runs) * 1000
            cli = statistics.median(r["client_cpu_per_k"] for r in runs) * 1000
            spread = f"{med:>10.0f} {min(rates):>10.0f} {max(rates):>10.0f}"
            print(f"{case:<10} {impl:<8} {spread} {srv:>14.1f} {cli:>14.1f}")
    print("ratios of medians (ours / other):")
    for case in cases:
        ours = medians.get((case, "ours"))
        parts = [
            f"vs {other} {ours / medians[(case, other)]:.2f}x"
            for other in impls
            if other != "ours" and ours and medians.get((case, other))
        ]
        print(f"  {case:<10} " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (1 s per case, 1 repeat)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    ap.add_argument("--impl", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 3, quick 1)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per case (default 3, quick 1)")
    ap.add_argument("--size", type=int, default=100, help="message size in bytes")
    # internal: the server and client processes
    ap.add_argument("--serve", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--client", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    loop_name = "asyncio" if args.loop == "both" else args.loop

    if args.serve:
        try:
            run_loop(loop_name, lambda: SERVERS[args.serve](args.port))
        except KeyboardInterrupt:
            pass
        return 0
    if args.client:
        res = run_loop(loop_name, lambda: run_client(args.client, args.port, args.case, args.duration, args.size))
        print(json.dumps(res))
        return 0

    args.duration = args.duration or (1.0 if args.quick else 3.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.cases = [c for c in args.cases.split(",") if c]
    impls = [i for i in args.impl.split(",") if i]
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    from hbone.grpc.codec import protobuf_backend

    print(f"python {sys.version.split()[0]}, protobuf backend {protobuf_backend()}, {os.cpu_count()} cores, "
          f"{args.size}-byte messages, {args.duration}s x {args.repeat} per case")  # fmt: skip
    for loop_name in loops:
        table = {impl: bench(impl, loop_name, args) for impl in impls}
        report(loop_name, table, impls, args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
