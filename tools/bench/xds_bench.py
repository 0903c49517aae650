"""Delta xDS convergence benchmark: N clients, each subscribed to 1,000 clusters + 1,000 endpoint sets.

    .venv/bin/python tools/bench/xds_bench.py            # N = 100 and N = 1000
    .venv/bin/python tools/bench/xds_bench.py --quick    # N = 100 only
    .venv/bin/python tools/bench/xds_bench.py --clients 300 --workers 2 --json
    .venv/bin/python tools/bench/xds_bench.py --quick --against go-control-plane   # both servers, one run

The server is the real `microxds serve` CLI in its own process, fed a JSON config file in a temporary directory;
the clients are minimal raw Delta ADS clients (hbone `Channel`, one HTTP/2 connection each) spread over
`--workers` processes. Per round, the bench rewrites the config with K endpoints moved and measures, from the
moment the file is replaced, when the first and the last client ACKed the EDS response carrying the change. The
server's CPU seconds (/proc/PID/stat) are sampled around each round, its RSS (/proc/PID/status VmRSS) before the
clients connect and after they are all synced and idle.

`--against go-control-plane` runs the same clients against `gcp-ads` too (go-control-plane v0.14, one LinearCache
per type, built by tools/go-peers.sh) in the same run, and prints the ratios. go-control-plane has no config source:
a change is one `UpdateResources` batch of the moved CLAs through its control port, and its "applied" time is when
that batch was sent. The comparable figures are the fan-out (last ACK after applied), server CPU per round (ours
includes re-parsing the whole file, about the no-op rewrite's CPU) and RSS per client.

Note the file source: a change is noticed by polling (--poll-interval, 0.05 s here) and then debounced
(--debounce-quiet, 0.05 s here), so the measured time includes up to ~0.1 s that is config-source latency, and
the reload re-parses the whole file (O(total), once per change, not per client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLUSTERS = 1000
ROUNDS = (1, 10, 100)  # endpoints moved per round
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
PREFIX = "type.googleapis.com/"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"


# -- config ------------------------------------------------------------------------------------------------------


def config(version: int, moved: int) -> dict[str, Any]:
    """1,000 EDS clusters and their CLAs; the first `moved` CLAs get port 20000 + version."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    res: list[dict[str, Any]] = []
    for i in range(CLUSTERS):
        res.append({"@type": CDS, "name": f"c{i:04d}", "type": "EDS", "connect_timeout": "1s",
                    "eds_cluster_config": {"service_name": f"e{i:04d}", "eds_config": ads}})  # fmt: skip
    for i in range(CLUSTERS):
        port = 20000 + version if i < moved else 10000 + i
        res.append({"@type": EDS, "cluster_name": f"e{i:04d}", "endpoints": [{
            "locality": {"zone": "z1"}, "load_balancing_weight": 1,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}]})  # fmt: skip
    return {"resources": res}


def write_config(path: Path, version: int, moved: int, indent: int | None = None) -> None:
    tmp = path.with_name(".tmp.json")
    tmp.write_text(json.dumps(config(version, moved), indent=indent))
    os.replace(tmp, path)


_APPLIED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO microxds.serve: serving config", re.M)


def applied_times(log: Path) -> list[float]:
    """Wall-clock times at which the server installed a config (its log lines, millisecond resolution)."""
    out = []
    for m in _APPLIED.finditer(log.read_text(errors="replace")):
        out.append(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000)
    return out


def wait_applied(log: Path, count: int, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = applied_times(log)
        if len(times) >= count:
            return times[count - 1]
        time.sleep(0.01)  # poll interval
    raise SystemExit(f"server did not apply config #{count}")


# -- server process ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def start_server(cfg: Path, log: Path) -> tuple[Any, int]:
    import subprocess

    args = [sys.executable, "-m", "microxds.cli", "serve", "--config", str(cfg), "--listen", "127.0.0.1:0",
            "--poll-interval", "0.05", "--debounce-quiet", "0.05", "--debounce-max", "0.5",
            "--streams-per-second", "500", "--stream-burst", "500", "--max-in-flight", "200"]  # fmt: skip
    out = open(log, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"plaintext listening on [\d.]+:(\d+)", log.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.02)  # poll interval
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text(errors='replace')[-3000:]}")


class MicroxdsServer:
    """The real `microxds serve`, fed a JSON file that each round rewrites."""

    name = "microxds"

    def __init__(self, tmp: Path) -> None:
        self.cfg, self.log = tmp / "xds.json", tmp / "server.log"
        self.applied = 1

    def start(self) -> tuple[Any, int]:
        write_config(self.cfg, 0, 0)
        return start_server(self.cfg, self.log)

    def noop_reload(self) -> float | None:
        """A rewrite with the same resources: the config source re-parses everything (O(total)), nothing is pushed."""
        t0 = time.time()
        write_config(self.cfg, 0, 0, indent=1)
        self.applied += 1
        return wait_applied(self.log, self.applied) - t0

    def change(self, version: int, moved: int) -> None:
        write_config(self.cfg, version, moved)

    def applied_at(self) -> float:
        self.applied += 1
        return wait_applied(self.log, self.applied)


class GoControlPlaneServer:
    """go-control-plane v0.14 (`gcp-ads` from tests/peers/go): the same resources, changed through its control port."""

    name = "go-control-plane"

    def __init__(self, tmp: Path) -> None:
        import subprocess

        self.dir = tmp
        out = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "go-peers.sh"), "dir"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        self.binary = Path(os.environ.get("HBONE_GO_PEERS") or out.stdout.strip()) / "gcp-ads"
        if not self.binary.is_file():
            raise SystemExit("gcp-ads is not built: run tools/install-peers.sh (or tools/go-peers.sh build)")
        self.control = 0
        self.t_applied = 0.0

    def start(self) -> tuple[Any, int]:
        import subprocess

        cfg, log = self.dir / "gcp.json", self.dir / "gcp.log"
        cfg.write_text(json.dumps({"resources": [{"resource": r} for r in config(0, 0)["resources"]]}))
        out = open(log, "wb")  # noqa: SIM115 - lives as long as the server
        proc = subprocess.Popen([str(self.binary), "--config", str(cfg), "--record=false"], stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"ready xds=[\d.]+:(\d+) control=[\d.]+:(\d+)", log.read_text(errors="replace"))
            if m:
                self.control = int(m.group(2))
                return proc, int(m.group(1))
            if proc.poll() is not None:
                break
            time.sleep(0.02)  # poll interval
        proc.kill()
        raise SystemExit(f"gcp-ads did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def noop_reload(self) -> float | None:
        return None  # no config source to re-read

    def change(self, version: int, moved: int) -> None:
        import urllib.request

        # One batch (one UpdateResources per type), as microxds applies one file change as one batch.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        resources = config(version, moved)["resources"][CLUSTERS : CLUSTERS + moved]
        body = json.dumps({"resources": [{"resource": r} for r in resources]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.control}/resources", method="PUT", data=body)
        # The cache pushes before the PUT returns: "applied" is when the batch was handed over.
        self.t_applied = time.time()
        with opener.open(req, timeout=60) as resp:
            resp.read()

    def applied_at(self) -> float:
        return self.t_applied


# -- client workers ----------------------------------------------------------------------------------------------


class Client:
    """One raw Delta ADS client: subscribes, ACKs every response, never NACKs; records update ACK times."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.have = {CDS: 0, EDS: 0}
        self.synced = asyncio.Event()
        self.round = 0
        self.acked_at: dict[int, float] = {}
        self.resources_in_round: dict[int, int] = {}
        self.retries = 0

    async def run(self, port: int, stop: asyncio.Event) -> None:
        """Connect, retrying with backoff like a real xDS client (a connect storm overflows the listen backlog)."""
        delay = 0.1
        while True:
            try:
                await self.session(port, stop)
                return
            except Exception:
                if self.synced.is_set():
                    raise  # after the initial sync, a lost stream is a benchmark failure
                self.retries += 1
                self.have = {CDS: 0, EDS: 0}
                await asyncio.sleep(delay)  # reconnect backoff
                delay = min(delay * 2, 2.0)

    async def session(self, port: int, stop: asyncio.Event) -> None:
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2 as d

        from hbone.grpc.client import Channel
        from hbone.grpc.codec import ProtoCodec

        node = base_pb2.Node(id=f"bench-{self.index}", cluster="bench")
        async with Channel(f"127.0.0.1:{port}", max_receive_message_size=64 << 20) as ch:
            codecs = {"request_codec": ProtoCodec(d.DeltaDiscoveryRequest),
                      "response_codec": ProtoCodec(d.DeltaDiscoveryResponse)}  # fmt: skip
            async with ch.stream(DELTA, **codecs) as call:
                names_c = [f"c{i:04d}" for i in range(CLUSTERS)]
                names_e = [f"e{i:04d}" for i in range(CLUSTERS)]
                await call.send(d.DeltaDiscoveryRequest(node=node, type_url=CDS, resource_names_subscribe=names_c))
                await call.send(d.DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=names_e))
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
                        raise RuntimeError(f"client {self.index}: stream ended")
                    await call.send(d.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce))
                    now = time.time()
                    if self.synced.is_set():
                        self.acked_at[self.round] = now
                        self.resources_in_round[self.round] = self.resources_in_round.get(self.round, 0) + len(
                            resp.resources
                        )
                    else:
                        self.have[resp.type_url] = self.have.get(resp.type_url, 0) + len(resp.resources)
                        if self.have[CDS] >= CLUSTERS and self.have[EDS] >= CLUSTERS:
                            self.synced.set()
                    recv = asyncio.ensure_future(call.recv())


async def worker_main(port: int, first: int, count: int, commands: Any, results: Any) -> None:
    clients = [Client(first + i) for i in range(count)]
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.run(port, stop)) for c in clients]
    loop = asyncio.get_running_loop()
    started = time.time()
    waiting = asyncio.ensure_future(asyncio.gather(*(c.synced.wait() for c in clients)))
    failed = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))
    await asyncio.wait({waiting, failed}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        raise RuntimeError(f"a client failed before the initial sync: {[t.exception() for t in tasks if t.done()]}")
    results.put(("synced", time.time() - started, sum(c.retries for c in clients)))
    while True:
        cmd = await loop.run_in_executor(None, commands.get)
        if cmd[0] == "stop":
            break
        _, rnd, deadline, moved = cmd
        for c in clients:
            c.round = rnd
        # Done when every client ACKed responses carrying all the changed resources (one response or several).
        while any(c.resources_in_round.get(rnd, 0) < moved for c in clients) and time.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # sampling the clients' state in this process
        acks = [c.acked_at.get(rnd) for c in clients]
        missing = sum(1 for a in acks if a is None)
        got = [a for a in acks if a is not None]
        resources = sum(c.resources_in_round.get(rnd, 0) for c in clients)
        results.put(("round", rnd, min(got, default=0.0), max(got, default=0.0), missing, resources))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def worker(port: int, first: int, count: int, commands: Any, results: Any) -> None:
    try:
        import uvloop

        uvloop.run(worker_main(port, first, count, commands, results))
    except ImportError:
        asyncio.run(worker_main(port, first, count, commands, results))


# -- one run -----------------------------------------------------------------------------------------------------


def run(n: int, workers: int, against: str = "microxds") -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="xds-bench-") as tmp:
        server: MicroxdsServer | GoControlPlaneServer
        server = GoControlPlaneServer(Path(tmp)) if against == "go-control-plane" else MicroxdsServer(Path(tmp))
        proc, port = server.start()
        try:
            time.sleep(0.5)  # let the freshly started server settle before the baseline RSS sample
            base_rss = rss_kib(proc.pid)
            cpu0 = cpu_seconds(proc.pid)
            queues = [ctx.Queue() for _ in range(workers)]
            results = ctx.Queue()
            per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
            procs, first = [], 0
            t_connect = time.time()
            for i, count in enumerate(per):
                p = ctx.Process(target=worker, args=(port, first, count, queues[i], results), daemon=True)
                p.start()
                procs.append(p)
                first += count
            retries = 0
            for _ in range(workers):
                msg = results.get(timeout=600)
                assert msg[0] == "synced", msg
                retries += msg[2]
            sync_s = time.time() - t_connect
            cpu_sync = cpu_seconds(proc.pid) - cpu0
            # Idle means idle: send buffers drained and the server's after-burst heap release (1 s quiet) has run.
            idle_deadline = time.time() + 3.0
            while time.time() < idle_deadline:
                time.sleep(0.1)  # quiet period before the RSS sample
            synced_rss = rss_kib(proc.pid)
            cpu_before = cpu_seconds(proc.pid)
            reload_s = server.noop_reload()
            reload_cpu = cpu_seconds(proc.pid) - cpu_before
            rounds = []
            for version, moved in enumerate(ROUNDS, start=1):
                cpu_before = cpu_seconds(proc.pid)
                t0 = time.time()
                for q in queues:
                    q.put(("round", version, t0 + 60, moved))
                server.change(version, moved)
                reports = [results.get(timeout=120) for _ in range(workers)]
                cpu_after = cpu_seconds(proc.pid)
                t_applied = server.applied_at()
                rounds.append({
                    "endpoints_changed": moved,
                    "first_ack_s": round(min(r[2] for r in reports) - t0, 3),
                    "last_ack_s": round(max(r[3] for r in reports) - t0, 3),
                    "applied_s": round(t_applied - t0, 3),
                    "fanout_s": round(max(r[3] for r in reports) - t_applied, 3),
                    "clients_missing": sum(r[4] for r in reports),
                    "resources_pushed": sum(r[5] for r in reports),
                    "server_cpu_s": round(cpu_after - cpu_before, 3),
                })  # fmt: skip
            for q in queues:
                q.put(("stop",))
            for p in procs:
                p.join(30)
            return {
                "server": server.name,
                "clients": n,
                "resources_per_client": 2 * CLUSTERS,
                "initial_sync_s": round(sync_s, 2),
                "connect_retries": retries,
                "initial_sync_server_cpu_s": round(cpu_sync, 2),
                "server_rss_base_mib": round(base_rss / 1024, 1),
                "server_rss_synced_mib": round(synced_rss / 1024, 1),
                "rss_per_client_kib": round((synced_rss - base_rss) / n, 1),
                "noop_reload_s": None if reload_s is None else round(reload_s, 3),
                "noop_reload_server_cpu_s": None if reload_s is None else round(reload_cpu, 3),
                "rounds": rounds,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="N = 100 only")
    ap.add_argument("--clients", type=int, action="append", help="client counts (repeatable)")
    ap.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--against", choices=["go-control-plane"], help="also run the same clients against this server")
    args = ap.parse_args(argv)
    counts = args.clients or ([100] if args.quick else [100, 1000])
    servers = ["microxds"] + ([args.against] if args.against else [])
    out = [run(n, min(args.workers, n), server) for n in counts for server in servers]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in out:
        print(
            f"[{r['server']}] N={r['clients']} clients x {r['resources_per_client']} resources: initial sync "
            f"{r['initial_sync_s']} s "
            f"(server CPU {r['initial_sync_server_cpu_s']} s, {r['connect_retries']} reconnects)\n"
            f"  server RSS {r['server_rss_base_mib']} -> {r['server_rss_synced_mib']} MiB = "
            f"{r['rss_per_client_kib']} KiB/client"
        )
        if r["noop_reload_s"] is not None:
            print(f"  no-op rewrite (re-parse, nothing pushed): applied after {r['noop_reload_s']} s, server CPU "
                  f"{r['noop_reload_server_cpu_s']} s")  # fmt: skip
        for x in r["rounds"]:
            print(f"  {x['endpoints_changed']:>4} endpoints changed: applied {x['applied_s']} s, first ACK "
                  f"{x['first_ack_s']} s, last ACK {x['last_ack_s']} s (fan-out {x['fanout_s']} s), server CPU "
                  f"{x['server_cpu_s']} s, {x['resources_pushed']} resources "
                  f"pushed, {x['clients_missing']} clients missing")  # fmt: skip
    if args.against:
        print_ratios(out, args.against)
    return 0


def print_ratios(out: list[dict[str, Any]], other: str) -> None:
    """microxds ÷ the other server, same N, same run (below 1 = microxds needs less)."""

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    for ours in (r for r in out if r["server"] == "microxds"):
        theirs = next(r for r in out if r["server"] == other and r["clients"] == ours["clients"])
        print(f"microxds / {other}, N={ours['clients']}: RSS per client "
              f"{ratio(ours['rss_per_client_kib'], theirs['rss_per_client_kib'])}, initial sync "
              f"{ratio(ours['initial_sync_s'], theirs['initial_sync_s'])}, initial sync server CPU "
              f"{ratio(ours['initial_sync_server_cpu_s'], theirs['initial_sync_server_cpu_s'])}")  # fmt: skip
        for a, b in zip(ours["rounds"], theirs["rounds"], strict=True):
            print(f"  {a['endpoints_changed']:>4} changed: fan-out {ratio(a['fanout_s'], b['fanout_s'])} "
                  f"({a['fanout_s']} vs {b['fanout_s']} s), last ACK {ratio(a['last_ack_s'], b['last_ack_s'])}, "
                  f"server CPU {ratio(a['server_cpu_s'], b['server_cpu_s'])} "
                  f"({a['server_cpu_s']} vs {b['server_cpu_s']} s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
