"""curl throughput through our SOCKS5 / CONNECT front ends (over HBONE) vs Debian's microsocks and tinyproxy.

    .venv/bin/python tools/bench/proxy_bench.py [--size-mib 64] [--rounds 5] [--json]

Everything runs on loopback: an HTTP server with a fixed body; an in-process HBONE server in front of it (mTLS,
test CA); `hbone socks5` and `hbone http-proxy` as real CLI processes tunnelling to it; microsocks and tinyproxy
(direct to the HTTP server, no HBONE hop) as references; curl as the client for every path. Reports the best and
median MiB/s per path and the ratios ours / reference. Our paths do strictly more work (two proxies, mTLS and
HTTP/2 framing), so the ratio is a lower bound on the front end's own efficiency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from hbone.errors import UpstreamUnreachable
from hbone.identity import IdentityManager
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import TestCA
from hbone.tls import MeshTls
from hbone.wire.authority import Authority

LOOPBACK = "127.0.0.1"
SVC = "web.ns.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(15):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
            try:
                _, w = await asyncio.open_connection(LOOPBACK, port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def http_server(body: bytes) -> AsyncIterator[int]:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            view = memoryview(body)
            for i in range(0, len(body), 1 << 20):
                writer.write(view[i : i + (1 << 20)])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@contextlib.asynccontextmanager
async def processes(*cmds: tuple[list[str], int]) -> AsyncIterator[None]:
    procs = []
    try:
        for cmd, port in cmds:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            procs.append(proc)
            await wait_port(port, proc)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def curl_once(args: list[str], url: str, size: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    started = time.perf_counter()
    proc = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-o", "/dev/null", "-w", "%{size_download}", *args, url],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or int(proc.stdout or 0) != size:
        raise RuntimeError(f"curl {' '.join(args)} {url}: rc={proc.returncode} {proc.stderr.strip()} {proc.stdout}")
    return size / elapsed / 2**20


async def measure(args: list[str], url: str, size: int, rounds: int) -> dict[str, float]:
    rates = [await asyncio.to_thread(curl_once, args, url, size) for _ in range(rounds)]
    return {"best": max(rates), "median": statistics.median(rates)}


async def bench(size_mib: int, rounds: int) -> dict[str, object]:
    for tool in ("curl", "microsocks", "tinyproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install curl microsocks tinyproxy-bin)")
    body = os.urandom(1 << 20) * size_mib
    ca = TestCA()
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        certs = ca.write(Path(tmp) / "client", "ns", "client")
        async with http_server(body) as http_port:

            async def resolve(target: Authority) -> tuple[str, int]:
                if target.host != SVC:
                    raise UpstreamUnreachable(f"unknown {target}")
                return LOOPBACK, http_port

            tls = MeshTls(IdentityManager.fixed(ca.issue("ns", "web")))
            server = HboneServer(tls, InboundHandler(InboundConfig(resolve=resolve, own_ports=frozenset())))
            _, hport = await server.listen(LOOPBACK, 0)
            ports = {k: free_port() for k in ("socks", "connect", "micro", "tiny")}
            conf = Path(tmp) / "tinyproxy.conf"
            conf.write_text(f"Port {ports['tiny']}\nListen {LOOPBACK}\nAllow {LOOPBACK}\nTimeout 60\nMaxClients 8\n")
            # explicit `off`: fixed default admin ports collide between the two daemons (and other users)
            via = ["--via", f"{LOOPBACK}:{hport}", "--certs", str(certs), "--admin", "off", "--metrics", "off",
                   "--readiness", "off", "--expect-identity", str(ca.spiffe("ns", "web"))]  # fmt: skip
            cli = [sys.executable, "-m", "hbone.cli"]
            try:
                async with processes(
                    ([*cli, "socks5", "--listen", f"{LOOPBACK}:{ports['socks']}", *via], ports["socks"]),
                    ([*cli, "http-proxy", "--listen", f"{LOOPBACK}:{ports['connect']}", *via], ports["connect"]),
                    (["microsocks", "-i", LOOPBACK, "-p", str(ports["micro"])], ports["micro"]),
                    (["tinyproxy", "-d", "-c", str(conf)], ports["tiny"]),
                ):
                    direct, mesh, size = f"http://{LOOPBACK}:{http_port}/", f"http://{SVC}/", len(body)
                    results = {
                        "direct (no proxy)": await measure([], direct, size, rounds),
                        "hbone socks5 -> HBONE": await measure(
                            ["--socks5-hostname", f"{LOOPBACK}:{ports['socks']}"], mesh, size, rounds
                        ),
                        "microsocks": await measure(["--socks5", f"{LOOPBACK}:{ports['micro']}"], direct, size, rounds),
                        "hbone http-proxy -> HBONE": await measure(
                            ["-p", "-x", f"http://{LOOPBACK}:{ports['connect']}"], mesh, size, rounds
                        ),
                        "tinyproxy": await measure(
                            ["-p", "-x", f"http://{LOOPBACK}:{ports['tiny']}"], direct, size, rounds
                        ),
                    }
            finally:
                await server.close()
    ratios = {
        "socks5 / microsocks": results["hbone socks5 -> HBONE"]["best"] / results["microsocks"]["best"],
        "connect / tinyproxy": results["hbone http-proxy -> HBONE"]["best"] / results["tinyproxy"]["best"],
    }
    return {"size_mib": size_mib, "rounds": rounds, "mib_per_s": results, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(bench(args.size_mib, args.rounds))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.size_mib} MiB per request, best / median of {args.rounds} (MiB/s)")
    for name, r in report["mib_per_s"].items():  # type: ignore[attr-defined]
        print(f"  {name:<28} {r['best']:8.1f} {r['median']:8.1f}")
    for name, ratio in report["ratios"].items():  # type: ignore[attr-defined]
        print(f"  ratio {name:<22} {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
