"""Instructions per tunnel (or per round trip) of `hbone serve` and `hbone forward`, counted by callgrind: an A/B
that load cannot move.

    .venv/bin/python tools/bench/hop_instructions.py [--tree NAME=PATH ...] [--tunnels 300] [--parallel 10]
                                                     [--round-trips N] [--repeats 3] [--keep DIR]

CPU time per tunnel moves by ±20% between identical runs on a shared 2-core box; the number of instructions a
process executes for a fixed batch of tunnels does not (±0.5% here). Each tree (default: this checkout) runs one
`hbone serve` and one `hbone forward` to nginx under `valgrind --tool=callgrind --instr-atstart=no` (the
interpreter starts at valgrind's base speed; counting is switched on only around each measured batch with
`callgrind_control`). A Python loader opens `--tunnels` connections through the forward, `--parallel` at a time,
each an HTTP/1.0 GET read to EOF: a new tunnel and a new upstream dial each. Trees alternate within each repeat;
with two trees the second's counts are divided by the first's, per repeat. Counts are user-space only (a system
call counts as its libc wrapper), so kernel work and cache misses are not in them: pair this with the CPU A/B of
`hbone_envoy_bench.py --base-tree`. `--keep DIR` keeps the callgrind dumps (`callgrind_annotate --inclusive=yes`).
Needs valgrind and nginx.

`--round-trips N`: per round trip instead of per tunnel. The forward targets an echo server; one TCP connection
(one tunnel, opened and warmed before counting) carries N blocking 1 KiB ping-pongs per batch, like
`hbone_envoy_bench.py --only rr`.

`--strace`: system calls instead of instructions (no valgrind, whose own calls would be counted): `strace -c -f` is
attached to each proxy around each batch; prints every proxy's calls per tunnel / round trip, by name. Needs strace.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _hbone_native as native
from hbone_bench import HERE, NO_ADMIN, PY, Fleet

SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"


async def _load(address: str, tunnels: int, parallel: int) -> int:
    host, _, port = address.rpartition(":")
    gate = asyncio.Semaphore(parallel)

    async def one() -> bool:
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 120)
            writer.close()
            return answer.startswith(b"HTTP/1.1 200")

    return sum(await asyncio.gather(*(one() for _ in range(tunnels))))


class PingPong:
    """One TCP connection through the forward to the echo server: blocking 1 KiB round trips."""

    SIZE = 1024

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._msg, self._buf = bytes(self.SIZE), memoryview(bytearray(self.SIZE))

    def run(self, count: int) -> int:
        for _ in range(count):
            self.sock.sendall(self._msg)
            got = 0
            while got < self.SIZE:
                n = self.sock.recv_into(self._buf[got:])
                if not n:
                    raise ConnectionError("the echo connection closed")
                got += n
        return count


def _strace_counts(path: Path) -> dict[str, int]:
    """{system call: calls} from a `strace -c` summary."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
            counts[cols[-1]] = int(cols[3])
    return counts


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=120, check=False)


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


class Tree:
    """One checkout's serve + forward under callgrind."""

    def __init__(
        self, fleet: Fleet, name: str, path: Path | None, certs: dict[str, Path], target: str, strace: bool
    ) -> None:
        self.name, self.fleet, self.strace = name, fleet, strace
        self.dumps = fleet.workdir / f"cg-{name}"
        self.dumps.mkdir()
        srv = ["serve", "--certs", str(certs["srv"]), "--listen", "127.0.0.1:0", "--authz", "allow-all"]
        via = fleet.start(f"{name}-serve", self._argv(path, "serve", srv), r"listening mtls=([\d.]+:\d+)", 600)
        fwd = ["forward", "--listen", "127.0.0.1:0", "--target", target, "--via", via, "--certs", str(certs["cli"]),
               "--expect-identity", SERVER_ID]  # fmt: skip
        self.entry = fleet.start(f"{name}-fwd", self._argv(path, "fwd", fwd), r"hbone forward: listening (\S+)", 600)
        self.pids = {role: fleet.peers[f"{name}-{role}"].proc.pid for role in ("serve", "fwd")}
        self.pingpong: PingPong | None = None

    def warm(self, parallel: int, round_trips: int) -> None:
        """Dial the pool and fill the caches (not counted); in round-trip mode open the one measured tunnel."""
        if round_trips:
            self.pingpong = PingPong(self.entry)
            self.pingpong.run(max(200, round_trips // 5))
        else:
            asyncio.run(_load(self.entry, 100, parallel))

    def _argv(self, path: Path | None, role: str, args: list[str]) -> list[str]:
        tree = ["env", f"PYTHONPATH={path}"] if path is not None else []
        grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no", "--dump-line=no",
                 f"--callgrind-out-file={self.dumps}/{role}.%p"] if not self.strace else []  # fmt: skip
        return [*tree, *grind, PY, str(HERE / "_hbone_peers.py"), "--uvloop", "cli", *args, *NO_ADMIN]

    def _batch(self, tunnels: int, parallel: int) -> None:
        if self.pingpong is not None:
            ok = self.pingpong.run(tunnels)  # blocking: the echo came back, nothing of the batch is left in flight
        else:
            ok = asyncio.run(_load(self.entry, tunnels, parallel))
            time.sleep(1.0)  # the last records and closes
        if ok != tunnels:
            raise RuntimeError(f"{self.name}: {tunnels - ok} of {tunnels} tunnels failed")

    def measure(self, tunnels: int, parallel: int) -> dict[str, float]:
        """Instructions (or system calls) per unit of one counted batch."""
        if self.strace:
            return self._measure_syscalls(tunnels, parallel)
        for pid in self.pids.values():
            _control("-i", "on", str(pid))
            _control("-z", str(pid))
        self._batch(tunnels, parallel)
        out = {}
        for role, pid in self.pids.items():
            before = set(self.dumps.glob(f"{role}.{pid}*"))
            _control("-d", str(pid))
            _control("-i", "off", str(pid))
            new = sorted(set(self.dumps.glob(f"{role}.{pid}*")) - before, key=lambda p: p.stat().st_mtime)
            if not new:
                raise RuntimeError(f"{self.name}: callgrind wrote no dump for {role}")
            out[role] = _total(new[-1]) / tunnels
        return out

    def _measure_syscalls(self, tunnels: int, parallel: int) -> dict[str, float]:
        tracers = {}
        for role, pid in self.pids.items():
            log = self.dumps / f"strace-{role}-{time.monotonic_ns()}"
            argv = ["strace", "-c", "-f", "-p", str(pid), "-o", str(log)]
            tracers[role] = (log, subprocess.Popen(argv, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # strace has attached to every thread (a bench, not a test: no event to wait on)
        self._batch(tunnels, parallel)
        out = {}
        for role, (log, proc) in tracers.items():
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            counts = _strace_counts(log)
            out[f"{role} sys"] = sum(counts.values()) / tunnels
            detail = ", ".join(f"{k} {v / tunnels:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"  {self.name} {role}: {detail}", file=sys.stderr, flush=True)
        return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (repeatable, max 2)")
    parser.add_argument("--tunnels", type=int, default=300, help="tunnels per measured batch")
    parser.add_argument("--parallel", type=int, default=10, help="tunnels in flight")
    parser.add_argument("--round-trips", type=int, default=0,
                        help="per round trip: N 1 KiB ping-pongs on one open tunnel (echo target)")  # fmt: skip
    parser.add_argument("--strace", action="store_true", help="count system calls (strace -c) instead of instructions")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here")
    a = parser.parse_args(argv)
    trees: dict[str, Path | None] = {"this": None}
    if a.tree:
        trees = {name: Path(path).resolve() for name, _, path in (t.partition("=") for t in a.tree)}
    if len(trees) > 2:
        parser.error("at most two trees")
    from hbone.testing import TestCA

    workdir = Path(tempfile.mkdtemp(prefix="hbone-ir-"))
    ca = TestCA()
    certs = {"srv": ca.write(workdir / "srv", "bench", "server"), "cli": ca.write(workdir / "cli", "bench", "client")}
    fleet = Fleet(workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM still stops the fleet
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        if a.round_trips:
            echo = [PY, str(HERE / "_hbone_peers.py"), "--uvloop", "echo"]
            target = fleet.start("echo", echo, r"READY (\d+)")
        else:
            target = native.start_nginx(fleet)
        hops = [Tree(fleet, name, path, certs, target, a.strace) for name, path in trees.items()]
        for hop in hops:
            hop.warm(a.parallel, a.round_trips)
        batch = a.round_trips or a.tunnels
        for rep in range(a.repeats):
            for hop in hops if rep % 2 == 0 else hops[::-1]:
                r = hop.measure(batch, a.parallel)
                runs[hop.name].append(r)
                print(f"[{rep + 1}/{a.repeats}] {hop.name}: " + "  ".join(
                      f"{k} {v:.2f}" if k.endswith("sys") else f"{k} {v / 1e3:.1f} k" for k, v in r.items()),
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        fleet.stop()
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            for dump in workdir.glob("cg-*/*"):
                shutil.copy(dump, a.keep / f"{dump.parent.name}-{dump.name}")
        shutil.rmtree(workdir, ignore_errors=True)
    _table(runs, "round trip" if a.round_trips else "tunnel")
    return 0


def _table(runs: dict[str, list[dict[str, float]]], unit: str) -> None:
    keys = [k for k in ("serve", "fwd", "serve sys", "fwd sys") if all(k in r for rs in runs.values() for r in rs)]
    names = {"serve": "serve, instructions", "fwd": "forward, instructions", "serve sys": "serve, system calls",
             "fwd sys": "forward, system calls"}  # fmt: skip
    print("| tree | " + " | ".join(f"{names[k]} per {unit}" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rs in runs.items():
        cells = []
        for k in keys:
            x = [r[k] for r in rs]
            if k.endswith("sys"):
                cells.append(f"{statistics.median(x):.2f} [{min(x):.2f}-{max(x):.2f}]")
            else:
                cells.append(f"{statistics.median(x) / 1e3:,.1f} k [{min(x) / 1e3:,.1f}-{max(x) / 1e3:,.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if len(runs) == 2:
        first, second = runs.values()
        ratios = [[b[k] / x[k] for x, b in zip(first, second, strict=False) if x[k]] for k in keys]
        cells = [f"{statistics.median(x):.3f}x [{min(x):.3f}-{max(x):.3f}]" if x else "-" for x in ratios]
        print(f"| {' / '.join(reversed(list(runs)))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
