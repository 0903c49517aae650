"""httpx requests/s through the in-process mesh (`hbone.Mesh.httpx_transport`) vs the same httpx client through an
`hbone forward` sidecar, in one run, with the CPU each process spent per request.

    in-process:  client process [httpx → MeshTransport → HBONE mTLS] ──► server process [hbone.Mesh.serve_asgi]
    sidecar:     client process [httpx → plain TCP] → `hbone forward` process [HBONE mTLS] ──► the same server

The server is one process for both paths: a bare ASGI app (a fixed 13-byte body) served over HBONE by hypercorn's
protocol layer. Each phase runs `--seconds` with `--concurrency` requests in flight on keep-alive connections;
the phases alternate (mesh, sidecar, mesh, ...) `--repeats` times and the medians are printed. CPU comes from
/proc/PID/stat (user + system) of each process, taken around each phase.

    .venv/bin/python tools/bench/mesh_bench.py [--seconds 5] [--repeats 3] [--concurrency 8] [--http2] [--asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BODY = b"hello, mesh\n"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


# --- roles run as subprocesses ---------------------------------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": BODY + b"\n"})


async def run_server(certs: str) -> None:
    import hbone

    async with hbone.Mesh(certs) as mesh:
        server = await mesh.serve_asgi(app, host="127.0.0.1", port=0, authorization="allow-all")
        print(f"server listening 127.0.0.1:{server.address[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the launcher closes stdin


async def run_client(args: argparse.Namespace) -> None:
    import httpx

    import hbone

    async def load(client: httpx.AsyncClient) -> dict[str, float]:
        done = 0
        stop = time.monotonic() + args.seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                r = await client.get(args.url)
                if r.status_code != 200:
                    raise SystemExit(f"status {r.status_code}")
                done += 1

        # warm up the connections before the clock starts
        await asyncio.gather(*(client.get(args.url) for _ in range(args.concurrency)))
        cpu0, t0 = cpu_seconds(os.getpid()), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - t0
        return {"requests": done, "seconds": elapsed, "cpu": cpu_seconds(os.getpid()) - cpu0}

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    if args.via:
        async with hbone.Mesh(args.certs) as mesh:
            transport = mesh.httpx_transport(
                via=args.via,
                identities=[args.expect_identity],
                http1=not args.http2,
                http2=args.http2,
                max_connections=args.concurrency,
            )
            async with httpx.AsyncClient(transport=transport) as client:
                result = await load(client)
    else:
        async with httpx.AsyncClient(limits=limits, http1=not args.http2, http2=args.http2) as client:
            result = await load(client)
    print(json.dumps(result), flush=True)


# --- the launcher ----------------------------------------------------------------------------------------------


def _start(cmd: list[str], env: dict[str, str], pattern: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if m := re.search(pattern, line):
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"{' '.join(cmd[1:3])} did not start: {' | '.join(lines[-3:])}")


def _phase(args: argparse.Namespace, env: dict[str, str], extra: list[str], watch: dict[str, int]) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    cmd = [sys.executable, __file__, "--role", "client", "--seconds", str(args.seconds),
           "--concurrency", str(args.concurrency), *(["--http2"] if args.http2 else []), *extra]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.seconds + 60, check=False)
    if out.returncode != 0:
        raise SystemExit(f"client failed: {out.stderr.strip().splitlines()[-1:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    for name, pid in watch.items():
        result[f"cpu_{name}"] = cpu_seconds(pid) - before[name]
    return result


def launch(args: argparse.Namespace) -> None:
    from hbone.testing import TestCA

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.asyncio:
        env["HBONE_NO_UVLOOP"] = "1"
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        ca = TestCA()
        server_certs, client_certs = (
            ca.write(Path(tmp, "api"), "bench", "api"),
            ca.write(Path(tmp, "web"), "bench", "web"),
        )
        loop_flag = [] if args.asyncio else ["--uvloop"]
        server, hbone_port = _start(
            [sys.executable, __file__, "--role", "server", "--certs", str(server_certs), *loop_flag], env,
            r"server listening [\d.]+:(\d+)",
        )  # fmt: skip
        via = f"127.0.0.1:{hbone_port}"
        forward, fwd_port = _start(
            [sys.executable, "-m", "hbone.cli", "forward", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:8080",
             "--via", via, "--certs", str(client_certs), "--expect-identity", str(ca.spiffe("bench", "api")),
             "--admin", "off", "--metrics", "off", "--readiness", "off"],
            env, r"hbone forward: listening [\d.]+:(\d+)",
        )  # fmt: skip
        try:
            rows: dict[str, list[dict[str, float]]] = {"mesh": [], "sidecar": []}
            for _ in range(args.repeats):
                mesh_args = ["--certs", str(client_certs), "--via", via, "--url", "http://127.0.0.1:8080/",
                             "--expect-identity", str(ca.spiffe("bench", "api")), *loop_flag]  # fmt: skip
                rows["mesh"].append(_phase(args, env, mesh_args, {"server": server.pid}))
                side_args = ["--url", f"http://127.0.0.1:{fwd_port}/", *loop_flag]
                rows["sidecar"].append(_phase(args, env, side_args, {"server": server.pid, "forward": forward.pid}))
        finally:
            for proc in (forward, server):
                proc.kill()
                proc.wait()
    report(args, rows)


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, float]]]) -> None:
    def med(kind: str, key: str, per_request: bool = False) -> float:
        values = [r.get(key, 0.0) / (r["requests"] if per_request else 1.0) for r in rows[kind]]
        return statistics.median(values)

    rate = {k: statistics.median(r["requests"] / r["seconds"] for r in rows[k]) for k in rows}
    proto = "HTTP/2" if args.http2 else "HTTP/1.1"
    loop = "asyncio" if args.asyncio else "uvloop"
    print(f"\nhttpx {proto}, {args.concurrency} in flight, {args.seconds}s x {args.repeats} (medians), {loop}\n")
    print("| path | requests/s | client CPU µs/req | hbone forward CPU µs/req | server CPU µs/req | total µs/req |")
    print("|---|---|---|---|---|---|")
    for kind, label in (("mesh", "in-process `hbone.Mesh` transport"), ("sidecar", "plain httpx → `hbone forward`")):
        client, fwd, srv = (med(kind, k, True) * 1e6 for k in ("cpu", "cpu_forward", "cpu_server"))
        fwd_text = f"{fwd:.0f}" if kind == "sidecar" else "—"
        print(f"| {label} | {rate[kind]:,.0f} | {client:.0f} | {fwd_text} | {srv:.0f} | {client + fwd + srv:.0f} |")
    print(f"\nin-process / sidecar requests/s: {rate['mesh'] / rate['sidecar']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["launch", "server", "client"], default="launch", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--via", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--expect-identity", help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--http2", action="store_true", help="HTTP/2 (prior knowledge) instead of HTTP/1.1")
    parser.add_argument("--asyncio", action="store_true", help="every process on the stock loop, not uvloop")
    args = parser.parse_args()
    if args.role == "launch":
        launch(args)
        return
    runner = run_server(args.certs) if args.role == "server" else run_client(args)
    if args.uvloop:
        import uvloop

        uvloop.run(runner)
    else:
        asyncio.run(runner)


if __name__ == "__main__":
    main()
