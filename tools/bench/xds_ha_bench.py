"""High-availability benchmark: 3 `microxds serve --store etcd://...` replicas, N Delta clients spread over them,
one replica SIGKILLed.

    .venv/bin/python tools/bench/xds_ha_bench.py                   # 1,000 clients, 3 replicas
    .venv/bin/python tools/bench/xds_ha_bench.py --clients 300 --json

Setup: a real etcd (temporary data dir, loopback ports) holding 100 EDS clusters + 100 ClusterLoadAssignments;
three replica processes watching it; `--workers` client processes of raw Delta ADS clients (hbone `Channel`, one
HTTP/2 connection each, client i starts on replica i mod 3, ACKs every response, keeps name -> version and sends it
as `initial_resource_versions` on every new stream, fails over to the next replica when its stream breaks).

Measured:
1. failover: replica 0 is SIGKILLed; the time until every client that was on it has a new stream on another
   replica with both types ACKed, and how many resources those streams carried (target 0), cross-checked with
   the surviving replicas' `microxds_xds_pushed_resources_total`;
2. one endpoint changed with a single etcd Put: the time from the Put to the last client's ACK of it;
3. CPU seconds of the load generator (client processes) and of each replica during both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CLUSTERS = 100
STORE_PREFIX = "/microxds/bench/"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
T = "type.googleapis.com/"
CDS, EDS = T + "envoy.config.cluster.v3.Cluster", T + "envoy.config.endpoint.v3.ClusterLoadAssignment"


def cla(i: int, port: int) -> bytes:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    endpoints = [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
    return json.dumps({"@type": EDS, "cluster_name": f"e{i:03d}", "endpoints": endpoints}).encode()


def cluster(i: int) -> bytes:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return json.dumps({"@type": CDS, "name": f"c{i:03d}", "type": "EDS", "connect_timeout": "1s",
                       "eds_cluster_config": {"service_name": f"e{i:03d}", "eds_config": ads}}).encode()  # fmt: skip


def key(type_url: str, name: str) -> str:
    return STORE_PREFIX + type_url.removeprefix(T) + "/" + name


# -- processes ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_etcd(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("etcd not installed: run tools/install-peers.sh")
    client, peer = free_port(), free_port()
    c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    args = [binary, "--name", "bench", "--data-dir", str(tmp / "etcd"), "--listen-client-urls", c,
            "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
            "--initial-cluster", f"bench={p}", "--logger", "zap", "--log-outputs", "stderr"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(tmp / "etcd.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{c}/health", timeout=1) as r:
                if json.loads(r.read()).get("health") == "true":
                    return proc, client
        except OSError:
            time.sleep(0.05)  # poll interval
    proc.kill()
    raise SystemExit("etcd did not become healthy")


def start_replica(etcd_port: int, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    url = f"etcd://127.0.0.1:{etcd_port}{STORE_PREFIX.rstrip('/')}"
    args = [sys.executable, "-m", "microxds.cli", "serve", "--store", url, "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", "--streams-per-second", "2000", "--stream-burst", "2000",
            "--max-in-flight", "200"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,  # noqa: SIM115
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        xds = re.search(r"plaintext listening on [\d.]+:(\d+)", text)
        met = re.search(r"metrics listening on [\d.]+:(\d+)", text)
        if xds and met:
            return proc, int(xds.group(1)), int(met.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.02)  # poll interval
    proc.kill()
    raise SystemExit(f"replica did not start:\n{log.read_text(errors='replace')[-2000:]}")


def pushed_resources(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(m.group(1)) for m in re.finditer(r"^microxds_xds_pushed_resources_total\{[^}]*\} (\S+)$", text, re.M)
    )


# -- clients -----------------------------------------------------------------------------------------------------


class Client:
    """A raw Delta client with resume and failover over the replica list."""

    def __init__(self, index: int, ports: list[int]) -> None:
        self.index, self.ports = index, ports
        self.replica = index % len(ports)
        self.rng = random.Random(index)
        self.known: dict[str, dict[str, str]] = {CDS: {}, EDS: {}}
        self.synced = asyncio.Event()
        self.streams = 0
        self.stream_acked_at: float | None = None  # both types ACKed on the current stream
        self.resources_received = 0
        self.acked_at: dict[tuple[str, str], float] = {}  # (name, version) of EDS -> ACK time

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.01
        while not stop.is_set():
            try:
                await self.session(stop)
                return
            except Exception:
                if self.synced.is_set():  # fail over to another replica, picked at random as FailoverOpener does
                    self.replica = self.rng.choice([i for i in range(len(self.ports)) if i != self.replica])
                await asyncio.sleep(delay)  # reconnect backoff
                delay = min(delay * 2, 1.0)

    async def session(self, stop: asyncio.Event) -> None:
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2 as d

        from hbone.grpc.client import Channel
        from hbone.grpc.codec import ProtoCodec

        node = base_pb2.Node(id=f"ha-{self.index}")
        async with Channel(f"127.0.0.1:{self.ports[self.replica]}", connect_timeout=5) as ch:
            codecs = {"request_codec": ProtoCodec(d.DeltaDiscoveryRequest),
                      "response_codec": ProtoCodec(d.DeltaDiscoveryResponse)}  # fmt: skip
            async with ch.stream(DELTA, **codecs) as call:
                for i, t in enumerate((CDS, EDS)):
                    req = d.DeltaDiscoveryRequest(type_url=t, initial_resource_versions=self.known[t])
                    if i == 0:
                        req.node.CopyFrom(node)
                    await call.send(req)
                self.streams += 1
                self.stream_acked_at = None
                answered: set[str] = set()
                recv = asyncio.ensure_future(call.recv())
                stopper = asyncio.ensure_future(stop.wait())
                while True:
                    done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        call.cancel()
                        return
                    resp = recv.result()
                    if resp is None:
                        raise RuntimeError("stream ended")
                    held = self.known[resp.type_url]
                    for r in resp.resources:
                        if r.HasField("resource"):
                            held[r.name] = r.version
                            self.resources_received += 1
                    for name in resp.removed_resources:
                        held.pop(name, None)
                    await call.send(d.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce))
                    now = time.time()
                    answered.add(resp.type_url)
                    if self.stream_acked_at is None and answered >= {CDS, EDS}:
                        self.stream_acked_at = now
                    if resp.type_url == EDS:
                        for r in resp.resources:
                            self.acked_at.setdefault((r.name, r.version), now)
                    if len(self.known[CDS]) >= CLUSTERS and len(self.known[EDS]) >= CLUSTERS:
                        self.synced.set()
                    recv = asyncio.ensure_future(call.recv())


async def worker_main(ports: list[int], first: int, count: int, commands: Any, results: Any) -> None:
    clients = [Client(first + i, ports) for i in range(count)]
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.run(stop)) for c in clients]
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), 600)
    results.put(("synced", time.process_time()))
    while True:
        cmd = await loop.run_in_executor(None, commands.get)
        cpu0 = time.process_time()
        if cmd[0] == "stop":
            break
        if cmd[0] == "kill":
            _, killed, t_kill, deadline = cmd
            moved = [c for c in clients if c.index % len(ports) == killed]
            before = {c.index: (c.streams, c.resources_received) for c in moved}
            while time.time() < deadline and not all(  # noqa: ASYNC110
                c.streams > before[c.index][0] and c.stream_acked_at is not None for c in moved
            ):
                await asyncio.sleep(0.005)  # sampling the clients' state in this process
            times = [c.stream_acked_at - t_kill for c in moved if c.stream_acked_at is not None]
            resent = sum(c.resources_received - before[c.index][1] for c in moved)
            missing = sum(1 for c in moved if c.streams == before[c.index][0] or c.stream_acked_at is None)
            results.put(("kill", len(moved), max(times, default=0.0), resent, missing, time.process_time() - cpu0))
        elif cmd[0] == "change":
            _, name, version, t_write, deadline = cmd
            while time.time() < deadline and any((name, version) not in c.acked_at for c in clients):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # sampling the clients' state in this process
            acks = [c.acked_at.get((name, version)) for c in clients]
            got = [a - t_write for a in acks if a is not None]
            results.put(("change", max(got, default=0.0), sum(a is None for a in acks), time.process_time() - cpu0))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def worker(ports: list[int], first: int, count: int, commands: Any, results: Any) -> None:
    try:
        import uvloop

        uvloop.run(worker_main(ports, first, count, commands, results))
    except ImportError:
        asyncio.run(worker_main(ports, first, count, commands, results))


# -- one run -----------------------------------------------------------------------------------------------------


async def fill_store(etcd_port: int) -> None:
    from microxds.etcd.client import EtcdClient

    async with EtcdClient([f"127.0.0.1:{etcd_port}"]) as client:
        for i in range(CLUSTERS):
            await client.put(key(CDS, f"c{i:03d}"), cluster(i))
            await client.put(key(EDS, f"e{i:03d}"), cla(i, 10000 + i))


async def put_endpoint(etcd_port: int, port: int) -> tuple[float, str]:
    """One endpoint moved with one Put; returns (time just before the Put, the new resource version)."""
    from microxds.etcd.client import EtcdClient
    from microxds.sources.storekeys import parse_entry

    k, value = key(EDS, "e000"), cla(0, port)
    version = parse_entry(STORE_PREFIX, k, value).resource.version
    async with EtcdClient([f"127.0.0.1:{etcd_port}"]) as client:
        await client.range_prefix(STORE_PREFIX, keys_only=True)  # connection up before the clock starts
        t0 = time.time()
        await client.put(k, value)
    return t0, version


def run(n: int, workers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="xds-ha-bench-") as tmpdir:
        tmp = Path(tmpdir)
        etcd, etcd_port = start_etcd(tmp)
        replicas: list[tuple[subprocess.Popen[bytes], int, int]] = []
        procs: list[Any] = []
        try:
            asyncio.run(fill_store(etcd_port))
            replicas = [start_replica(etcd_port, tmp / f"replica{i}.log") for i in range(3)]
            ports = [r[1] for r in replicas]
            queues, results = [ctx.Queue() for _ in range(workers)], ctx.Queue()
            per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
            first, t_connect = 0, time.time()
            for i, count in enumerate(per):
                p = ctx.Process(target=worker, args=(ports, first, count, queues[i], results), daemon=True)
                p.start()
                procs.append(p)
                first += count
            for _ in range(workers):
                assert results.get(timeout=900)[0] == "synced"
            sync_s = time.time() - t_connect
            time.sleep(1.0)  # let the replicas' push bursts settle before sampling their counters
            survivors = replicas[1:]
            pushed0 = sum(pushed_resources(m) for _, _, m in survivors)
            cpu0 = [cpu_seconds(p.pid) for p, _, _ in survivors]
            t_kill = time.time()
            replicas[0][0].send_signal(signal.SIGKILL)
            for q in queues:
                q.put(("kill", 0, t_kill, t_kill + 120))
            kills = [results.get(timeout=200) for _ in range(workers)]
            server_resent = sum(pushed_resources(m) for _, _, m in survivors) - pushed0
            cpu_failover = [cpu_seconds(p.pid) - c for (p, _, _), c in zip(survivors, cpu0, strict=True)]
            cpu0 = [cpu_seconds(p.pid) for p, _, _ in survivors]
            t_write, version = asyncio.run(put_endpoint(etcd_port, 20000))
            for q in queues:
                q.put(("change", "e000", version, t_write, t_write + 60))
            changes = [results.get(timeout=120) for _ in range(workers)]
            cpu_change = [cpu_seconds(p.pid) - c for (p, _, _), c in zip(survivors, cpu0, strict=True)]
            for q in queues:
                q.put(("stop",))
            for p in procs:
                p.join(30)
            return {
                "clients": n, "replicas": 3, "resources_per_client": 2 * CLUSTERS, "workers": workers,
                "initial_sync_s": round(sync_s, 2),
                "failover": {
                    "clients_moved": sum(k[1] for k in kills),
                    "last_reconnect_ack_s": round(max(k[2] for k in kills), 3),
                    "resources_resent_client_side": sum(k[3] for k in kills),
                    "resources_resent_server_side": int(server_resent),
                    "clients_missing": sum(k[4] for k in kills),
                    "load_generator_cpu_s": round(sum(k[5] for k in kills), 2),
                    "surviving_replicas_cpu_s": [round(c, 2) for c in cpu_failover],
                },
                "one_endpoint_change": {
                    "etcd_put_to_last_ack_s": round(max(c[1] for c in changes), 3),
                    "clients_missing": sum(c[2] for c in changes),
                    "load_generator_cpu_s": round(sum(c[3] for c in changes), 2),
                    "replicas_cpu_s": [round(c, 3) for c in cpu_change],
                },
            }  # fmt: skip
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for proc, _, _ in replicas:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            etcd.terminate()
            etcd.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = run(args.clients, min(args.workers, args.clients))
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    f, c = r["failover"], r["one_endpoint_change"]
    print(f"{r['clients']} Delta clients x {r['resources_per_client']} resources over 3 replicas "
          f"({r['workers']} client processes): initial sync {r['initial_sync_s']} s\n"
          f"  replica 0 SIGKILLed: {f['clients_moved']} clients moved, last one reconnected and ACKed after "
          f"{f['last_reconnect_ack_s']} s; resources re-sent: {f['resources_resent_client_side']} (clients), "
          f"{f['resources_resent_server_side']} (replica metrics); {f['clients_missing']} missing\n"
          f"    CPU: load generator {f['load_generator_cpu_s']} s, "
          f"surviving replicas {f['surviving_replicas_cpu_s']} s\n"
          f"  one endpoint changed (one etcd Put): last client ACK {c['etcd_put_to_last_ack_s']} s after the Put, "
          f"{c['clients_missing']} missing; CPU: load generator {c['load_generator_cpu_s']} s, replicas "
          f"{c['replicas_cpu_s']} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
