"""HBONE hop against Envoy, side by side in one run, with native load generators.

    .venv/bin/python tools/bench/hbone_envoy_bench.py [--quick] [--repeats N] [--pairs P ...] [--only KIND ...]
                                                      [--json FILE] [--markdown FILE] [--profile DIR]

The same full hop for every pair: plain TCP in → client proxy → mTLS HTTP/2 CONNECT → server proxy → plain TCP
out. Pairs: `ours` (`hbone forward` → `hbone serve`), `envoy` (Envoy tcp_proxy tunneling → Envoy HCM CONNECT,
defaults), `envoy-matched` (the same with Envoy's HTTP/2 windows and per-connection buffers set to ours), and the
mixed `ours-envoy` (our forward → Envoy server) and `envoy-ours` (Envoy client → our serve). Every proxy runs one
worker (Envoy `--concurrency 1`; our CLIs are single-threaded, on uvloop as users run them).

Kinds: `bulk` (iperf3 through the client proxy to an iperf3 server: one connection's throughput), `rr` (1 KiB
round trips, one at a time, to an echo server: p50/p99), `rate` (wrk with `Connection: close`, 50 connections,
to nginx: every request is a new tunnel). The CPU of every process (load generator, both proxies, backend) is
taken around each case from /proc and getrusage. Cases run interleaved, repeat after repeat; ratios pair ours
with Envoy in the same repeat and are printed as median [min-max]. Needs envoy, iperf3, wrk, nginx
(tools/install-peers.sh). `--profile DIR` samples our CLIs with py-spy (the `bench` extra) during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _hbone_native as native
from _bench_profile import Profilers, perf_table, summarise_profiles
from _envoy_report import KINDS, readme_table, report
from hbone_bench import HERE, NO_ADMIN, PY, Fleet, _versions, run_to_end

SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"


@dataclass(frozen=True)
class Pair:
    key: str
    label: str
    client: str  # "fwd" (ours, one process per target) or an Envoy process name
    server: str  # fleet process name
    variant: str = ""  # our CLIs: "" as installed, "base" from --base-tree, "native" on the native HTTP/2 engine
    kinds: tuple[str, ...] = KINDS


BASE = "ours-base"
NATIVE = "ours-native"
DIRECT = "direct"


PAIRS = {
    p.key: p
    for p in (
        Pair("ours", "ours → ours (hbone forward → hbone serve)", "fwd", "serve"),
        Pair("envoy", "Envoy → Envoy (defaults)", "envoy-cli", "envoy-srv"),
        Pair("envoy-matched", "Envoy → Envoy (windows and buffers matched to ours)", "envoy-cli-m", "envoy-srv-m"),
        Pair("ours-envoy", "our forward → Envoy server", "fwd", "envoy-srv"),
        Pair("envoy-ours", "Envoy client → our serve", "envoy-cli-o", "serve"),
        Pair(BASE, "ours from --base-tree (forward → serve)", "fwd", "serve-base", variant="base"),
        Pair(NATIVE, "ours on the native HTTP/2 engine (forward → serve)", "fwd", "serve-native", variant="native"),
        # the machine's own round-trip latency, printed with every run that measures round trips
        Pair(DIRECT, "no proxies: client straight to the echo server", "", "", kinds=("rr",)),
    )
}


class Hop:
    """The started fleet: where each (pair, kind) enters and which processes it crosses."""

    def __init__(self, fleet: Fleet, pairs: list[Pair], certs: dict[str, Path], base_tree: Path | None) -> None:
        self.fleet = fleet
        self.base_tree = base_tree
        self.entry: dict[tuple[str, str], str] = {}
        self.procs: dict[tuple[str, str], dict[str, str]] = {}  # role -> process name
        self.ours: list[str] = []  # our CLI processes (profiled with --profile)
        self.proxies: list[str] = []  # Envoy's (--perf also takes ours: `proxies + ours`)
        backend = {"bulk": native.start_iperf3(fleet), "rr": self._python_peer("echo"),
                   "rate": native.start_nginx(fleet)}  # fmt: skip
        self.backend_proc = {"bulk": "iperf3-s", "rr": "echo", "rate": "nginx"}
        if any(p.key == DIRECT for p in pairs):
            self.entry[DIRECT, "rr"] = backend["rr"]
            self.procs[DIRECT, "rr"] = {"backend": "echo"}
        pairs = [p for p in pairs if p.key != DIRECT]
        servers: dict[str, str] = {}
        for name in sorted({p.server for p in pairs}):
            if name.startswith("serve"):
                argv = self._cli("serve", "--certs", str(certs["srv"]), "--listen", "127.0.0.1:0", "--authz",
                                 "allow-all", variant=name.partition("-")[2])  # fmt: skip
                servers[name] = fleet.start(name, argv, r"listening mtls=([\d.]+:\d+)")
                self.ours.append(name)
            else:
                cfg = native.envoy_server(certs["srv"], matched=name.endswith("-m"))
                servers[name] = native.start_envoy(fleet, name, cfg)["hbone_in"]
                self.proxies.append(name)
        for pair in pairs:
            via = servers[pair.server]
            if pair.client == "fwd":
                for kind in KINDS:
                    name = f"fwd-{pair.key}-{kind}"
                    argv = self._cli("forward", "--listen", "127.0.0.1:0", "--target", backend[kind], "--via", via,
                                     "--certs", str(certs["cli"]), "--expect-identity", SERVER_ID,
                                     variant=pair.variant)  # fmt: skip
                    self.entry[pair.key, kind] = fleet.start(name, argv, r"hbone forward: listening ([\d.]+:\d+)")
                    self._roles(pair, kind, name)
                    self.ours.append(name)
            else:
                cfg = native.envoy_client(certs["cli"], backend, via, SERVER_ID, matched=pair.key == "envoy-matched")
                listeners = native.start_envoy(fleet, pair.client, cfg)
                self.proxies.append(pair.client)
                for kind in KINDS:
                    self.entry[pair.key, kind] = listeners[f"out-{kind}"]
                    self._roles(pair, kind, pair.client)

    def _roles(self, pair: Pair, kind: str, client: str) -> None:
        self.procs[pair.key, kind] = {"client proxy": client, "server proxy": pair.server,
                                      "backend": self.backend_proc[kind]}  # fmt: skip

    def _python_peer(self, role: str) -> str:
        return self.fleet.start(role, [PY, str(HERE / "_hbone_peers.py"), "--uvloop", role], r"READY (\d+)")

    def _cli(self, *args: str, variant: str = "") -> list[str]:
        # The launcher is this tree's; "base": `hbone` itself is imported from the other checkout; "native": the
        # launcher makes the native engine the default of H2Settings (the CLIs have no switch for it yet).
        tree = ["env", f"PYTHONPATH={self.base_tree}"] if variant == "base" else []
        engine = ["--h2-engine", "native"] if variant == "native" else []
        return [*tree, PY, str(HERE / "_hbone_peers.py"), "--uvloop", *engine, "cli", *args, *NO_ADMIN]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


Cpu = dict[str, float]


def run_load(hop: Hop, pair: str, kind: str, argv: list[str], timeout: float) -> tuple[str, dict[str, Cpu]]:
    """Run one load generator to completion. Returns its output and {"cpu": CPU seconds of every process over its
    run by role, "sys": of those the system (kernel) seconds of the proxies and backend, "io": read/write-type
    system calls of the proxies and backend}."""
    dead = hop.fleet.dead()
    if dead:
        raise RuntimeError(f"peer process(es) exited: {', '.join(dead)}")
    roles = hop.procs[pair, kind]
    before = {r: hop.fleet.cpu_split(n) for r, n in roles.items()}
    io0 = {r: hop.fleet.syscalls(n) for r, n in roles.items()}
    load0 = _children_cpu()
    rc, out, err = run_to_end(argv, timeout)
    after = {r: hop.fleet.cpu_split(n) for r, n in roles.items()}
    io = {r: hop.fleet.syscalls(n) - io0[r] for r, n in roles.items()}
    cpu = {r: sum(after[r]) - sum(before[r]) for r in roles}
    cpu["load generator"] = _children_cpu() - load0  # reaped by communicate(): exactly this child
    sys_ = {r: after[r][1] - before[r][1] for r in roles}
    text = out.decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"{argv[0]} exit {rc}: {(err.decode(errors='replace') + text)[-600:]}")
    return text, {"cpu": cpu, "sys": sys_, "io": io}


def run_case(hop: Hop, a: argparse.Namespace, pair: str, kind: str, warm: bool = False) -> dict[str, Any]:
    addr = hop.entry[pair, kind]
    if kind == "bulk":
        argv = native.iperf3_argv(addr, a.seconds, a.warm_bytes if warm else None)
        native.wait_iperf3_idle(hop.fleet)
        text, cpu = run_load(hop, pair, kind, argv, a.case_timeout)
        return {**native.parse_iperf3(text), **cpu}
    if kind == "rr":
        count = 50 if warm else a.rr_count
        argv = [PY, str(HERE / "_hbone_loads.py"), "latency", addr, "--count", str(count), "--warmup", "20"]
        text, cpu = run_load(hop, pair, kind, argv, a.case_timeout)
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
        cpu["cpu"]["load generator"] = result.pop("cpu")  # the Python client's measured loop, not its start-up
        return {**result, **cpu}
    if warm:  # a few new tunnels: code paths warm and the pooled HTTP/2 connection dialled
        for _ in range(20):
            req = urllib.request.Request(f"http://{addr}/", headers={"Connection": "close"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        return {}
    text, cpu = run_load(hop, pair, kind, native.wrk_argv(addr, a.parallel, a.seconds), a.case_timeout)
    return {**native.parse_wrk(text), **cpu}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 s cases: a smoke run")
    parser.add_argument("--repeats", type=int, help="repeats per case (default 3; --quick: 1)")
    parser.add_argument("--pairs", nargs="*", choices=sorted(PAIRS),
                        help=f"default: all but {NATIVE} ({BASE}: with --base-tree)")  # fmt: skip
    parser.add_argument("--base-tree", type=Path, help=f"a checkout whose hbone runs as pair {BASE} (same-run A/B)")
    parser.add_argument("--only", nargs="*", choices=KINDS, default=list(KINDS), help="kinds to run (default all)")
    parser.add_argument("--seconds", type=int, help="duration of each bulk and rate case (default 3; --quick: 1)")
    parser.add_argument("--rr-count", type=int, help="round trips per rr case (default 10000; --quick: 500)")
    parser.add_argument("--parallel", type=int, default=50, help="wrk connections in flight (default 50)")
    parser.add_argument("--case-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write every run's raw figures here")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--profile", type=Path, help="py-spy our CLIs during the run, summaries into this dir")
    parser.add_argument(
        "--perf",
        type=Path,
        help="perf record every proxy, ours and Envoy's, into this dir; print "
        "each one's CPU by library (kernel, interpreter, OpenSSL, libc, Envoy)",
    )
    parser.add_argument("--native-frames", action="store_true", help="--profile: with C frames (py-spy --native)")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: print the tables of a --json file again, and the README's comparison table",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    a = parser.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.seconds = a.seconds or (1 if a.quick else 3)
    a.rr_count = a.rr_count or (500 if a.quick else 10000)
    a.warm_bytes = 4_000_000 if a.quick else 32_000_000
    a.pairs = a.pairs or [p for p in PAIRS if p not in (BASE, DIRECT, NATIVE)]
    if "rr" in a.only and DIRECT not in a.pairs:
        a.pairs.append(DIRECT)
    if a.base_tree is not None:
        a.base_tree = a.base_tree.resolve()
        if not (a.base_tree / "hbone" / "cli.py").is_file():
            parser.error(f"--base-tree {a.base_tree}: no hbone/cli.py there")
        if BASE not in a.pairs:
            a.pairs.append(BASE)
    elif BASE in a.pairs:
        parser.error(f"pair {BASE} needs --base-tree")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_json is not None:
        kept = json.loads(a.from_json.read_text())["runs"]
        print(report(kept, {p: PAIRS[p].label for p in kept}, f"HBONE hop vs Envoy ({a.from_json.name})"))
        print(readme_table(kept))
        return 0
    from hbone.testing import TestCA

    workdir = Path(tempfile.mkdtemp(prefix="hbone-envoy-bench-"))
    ca = TestCA()
    certs = {"srv": ca.write(workdir / "srv", "bench", "server"), "cli": ca.write(workdir / "cli", "bench", "client")}
    fleet = Fleet(workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {k: [] for k in a.only if k in PAIRS[p].kinds} for p in a.pairs
    }
    errors: list[str] = []
    started = time.monotonic()
    load0 = os.getloadavg()[0]  # context for the reader: this machine is shared
    profilers = Profilers(fleet)
    try:
        hop = Hop(fleet, [PAIRS[p] for p in a.pairs], certs, a.base_tree)
        for pair in a.pairs:
            for kind in runs[pair]:
                try:
                    run_case(hop, a, pair, kind, warm=True)
                except (RuntimeError, ValueError, KeyError, OSError) as e:
                    print(f"[warm-up] {pair} {kind}: FAILED {e}", file=sys.stderr, flush=True)
        if a.profile is not None:
            a.profile.mkdir(parents=True, exist_ok=True)
            profilers.py_spy(hop.ours, a.profile.resolve(), a.native_frames)
        if a.perf is not None:
            a.perf.mkdir(parents=True, exist_ok=True)
            profilers.perf(hop.ours + hop.proxies, a.perf.resolve())
        for rep in range(a.repeats):
            for kind in a.only:
                for pair in (p for p in a.pairs if kind in runs[p]):
                    try:
                        r = run_case(hop, a, pair, kind)
                    except (RuntimeError, ValueError, KeyError, OSError) as e:
                        errors.append(f"{pair} {kind}: {e}")
                        print(f"[{rep + 1}/{a.repeats}] {pair} {kind}: FAILED {e}", file=sys.stderr, flush=True)
                        continue
                    r["rep"] = rep
                    runs[pair][kind].append(r)
                    brief = {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}
                    print(f"[{rep + 1}/{a.repeats}] {pair} {kind}: {brief} cpu={r['cpu']}", file=sys.stderr,
                          flush=True)  # fmt: skip
    finally:
        profilers.stop()
        fleet.stop()
        if a.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    mode = "quick" if a.quick else "full"
    when = time.strftime("%Y-%m-%d %H:%M")
    title = f"HBONE hop vs Envoy ({mode}: {a.repeats} repeats, {a.seconds} s cases, {a.parallel} in flight, {when})"
    load = "load average at start / end: " + " / ".join(f"{x:.1f}" for x in (load0, os.getloadavg()[0]))
    tail = f"_{_versions()}; {native.tool_versions()}; {time.monotonic() - started:.0f} s; {load}._"
    text = f"{report(runs, {p: PAIRS[p].label for p in a.pairs}, title)}\n{tail}\n"
    if errors:
        text += "\nFailed cases:\n" + "\n".join(f"- {e[:300]}" for e in errors) + "\n"
    print(text)
    if a.markdown is not None:
        a.markdown.write_text(text)
    if a.json is not None:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "runs": runs,
                                      "errors": errors}, indent=1))  # fmt: skip
    if a.profile is not None:
        print(summarise_profiles(a.profile))
    if a.perf is not None:
        title = "**perf: each proxy's CPU samples by library** (all measured cases)"
        print(f"{title}\n\n{perf_table(a.perf, profilers.threads)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
