"""Instructions per tunnel of `hbone serve` and `hbone forward`, counted by callgrind: an A/B that load cannot move.

    .venv/bin/python tools/bench/hop_instructions.py [--tree NAME=PATH ...] [--tunnels 300] [--parallel 10]
                                                     [--repeats 3] [--keep DIR]

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
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
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


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=120, check=False)


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


class Tree:
    """One checkout's serve + forward under callgrind."""

    def __init__(self, fleet: Fleet, name: str, path: Path | None, certs: dict[str, Path], target: str) -> None:
        self.name, self.fleet = name, fleet
        self.dumps = fleet.workdir / f"cg-{name}"
        self.dumps.mkdir()
        srv = ["serve", "--certs", str(certs["srv"]), "--listen", "127.0.0.1:0", "--authz", "allow-all"]
        via = fleet.start(f"{name}-serve", self._argv(path, "serve", srv), r"listening mtls=([\d.]+:\d+)", 600)
        fwd = ["forward", "--listen", "127.0.0.1:0", "--target", target, "--via", via, "--certs", str(certs["cli"]),
               "--expect-identity", SERVER_ID]  # fmt: skip
        self.entry = fleet.start(f"{name}-fwd", self._argv(path, "fwd", fwd), r"hbone forward: listening (\S+)", 600)
        self.pids = {role: fleet.peers[f"{name}-{role}"].proc.pid for role in ("serve", "fwd")}

    def _argv(self, path: Path | None, role: str, args: list[str]) -> list[str]:
        tree = ["env", f"PYTHONPATH={path}"] if path is not None else []
        grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no", "--dump-line=no",
                 f"--callgrind-out-file={self.dumps}/{role}.%p"]  # fmt: skip
        return [*tree, *grind, PY, str(HERE / "_hbone_peers.py"), "--uvloop", "cli", *args, *NO_ADMIN]

    def measure(self, tunnels: int, parallel: int) -> dict[str, float]:
        for pid in self.pids.values():
            _control("-i", "on", str(pid))
            _control("-z", str(pid))
        ok = asyncio.run(_load(self.entry, tunnels, parallel))
        if ok != tunnels:
            raise RuntimeError(f"{self.name}: {tunnels - ok} of {tunnels} tunnels failed")
        time.sleep(1.0)  # the last records and closes
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (repeatable, max 2)")
    parser.add_argument("--tunnels", type=int, default=300, help="tunnels per measured batch")
    parser.add_argument("--parallel", type=int, default=10, help="tunnels in flight")
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
        target = native.start_nginx(fleet)
        hops = [Tree(fleet, name, path, certs, target) for name, path in trees.items()]
        for hop in hops:
            asyncio.run(_load(hop.entry, 100, a.parallel))  # pool dialled, caches warm; not counted
        for rep in range(a.repeats):
            for hop in hops if rep % 2 == 0 else hops[::-1]:
                r = hop.measure(a.tunnels, a.parallel)
                runs[hop.name].append(r)
                print(f"[{rep + 1}/{a.repeats}] {hop.name}: " + "  ".join(f"{k} {v / 1e3:.1f} k" for k, v in r.items()),
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        fleet.stop()
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            for dump in workdir.glob("cg-*/*"):
                shutil.copy(dump, a.keep / f"{dump.parent.name}-{dump.name}")
        shutil.rmtree(workdir, ignore_errors=True)
    print("| tree | serve, instructions per tunnel | forward, instructions per tunnel |")
    print("|---|---|---|")
    for name, rs in runs.items():
        cells = [f"{statistics.median(x) / 1e3:,.0f} k [{min(x) / 1e3:,.0f}-{max(x) / 1e3:,.0f}]"
                 for x in ([r[k] for r in rs] for k in ("serve", "fwd"))]  # fmt: skip
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if len(runs) == 2:
        first, second = runs.values()
        ratios = [[b[k] / x[k] for x, b in zip(first, second, strict=False)] for k in ("serve", "fwd")]
        cells = [f"{statistics.median(x):.3f}x [{min(x):.3f}-{max(x):.3f}]" for x in ratios]
        print(f"| {' / '.join(reversed(list(runs)))} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
