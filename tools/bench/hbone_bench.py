"""HBONE benchmark: tunnel throughput, latency, tunnel churn and handshakes, with baselines from the same run.

    .venv/bin/python tools/bench/hbone_bench.py [--quick] [--uvloop] [--repeats N] [--only SUBSTR ...]
                                                [--profile DIR] [--markdown FILE]

Every component is its own process (client, relays/proxies, HBONE server, sink) so each gets a core; every case
is repeated (interleaved, so drift hits all cases alike) and reported as min / median / max. Ratios pair each
repeat with its baseline from the same repeat. Loopback only; every case has a time limit; every process this
script starts is stopped (its process group) at the end. See tools/bench/README.md for what each case measures
and docs/performance.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
MB = 1_000_000
# Our daemons never take the fixed default admin ports (15000/15020/15021): other people's daemons hold them.
NO_ADMIN = ("--admin", "off", "--metrics", "off", "--readiness", "off")


# --- processes -------------------------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    address: str = ""


class Fleet:
    """The long-running processes of one run. Output goes to files: an unread pipe would block them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.peers: dict[str, Peer] = {}
        self._clk = os.sysconf("SC_CLK_TCK")

    def start(self, name: str, argv: list[str], ready: str | None, timeout: float = 30.0) -> str:
        """Start a peer; with `ready`, wait until its log matches and return the address in group 1."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        peer = Peer(name, proc, log)
        self.peers[name] = peer
        if ready is None:
            return ""
        pattern = re.compile(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(log.read_text(errors="replace"))
            if m:
                peer.address = m.group(1) if ":" in m.group(1) else f"127.0.0.1:{m.group(1)}"
                return peer.address
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")

    def cpu(self, name: str) -> float:
        """CPU seconds of a process and its reaped children (socat forks one per connection)."""
        return sum(self.cpu_split(name))

    def cpu_split(self, name: str) -> tuple[float, float]:
        """(user, system) CPU seconds of a process and its reaped children, all threads."""
        try:
            fields = Path(f"/proc/{self.peers[name].proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + cutime) / self._clk, (stime + cstime) / self._clk

    def syscalls(self, name: str) -> float:
        """Read- and write-type system calls a process made so far (/proc/PID/io syscr + syscw, all threads)."""
        try:
            fields = dict(
                line.split(": ") for line in Path(f"/proc/{self.peers[name].proc.pid}/io").read_text().splitlines()
            )
        except (OSError, ValueError):
            return float("nan")
        return float(int(fields["syscr"]) + int(fields["syscw"]))

    def dead(self) -> list[str]:
        return [n for n, p in self.peers.items() if p.proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM each process group we started, then SIGKILL what is left."""
        for p in self.peers.values():
            if p.proc.poll() is None:
                _signal_group(p.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8.0  # hbone serve drains for up to its drain deadline
        for p in self.peers.values():
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p.proc.pid, signal.SIGKILL)
            if p.proc.poll() is None:
                p.proc.wait(5)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group of a process we started (start_new_session=True): its pid is the pgid
    except (ProcessLookupError, PermissionError):
        pass


def run_to_end(argv: Sequence[str], timeout: float) -> tuple[int, bytes, bytes]:
    """Run one load generator to completion in its own process group: (exit code, stdout, stderr).

    On `timeout` the whole group is killed (a load generator may have children) and RuntimeError raised.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"timed out after {timeout:.0f}s") from None
    return proc.returncode, out, err


# --- cases -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    group: str  # bulk | latency | rate
    label: str
    argv: tuple[str, ...]
    procs: tuple[str, ...]  # peers whose CPU is attributed to this case
    baseline: str | None = None
    units: float = 1.0  # bulk: bytes; rate: ops (filled from the result)


@dataclass
class Outcome:
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_case(fleet: Fleet, case: Case, uvloop: bool, timeout: float, profile: Path | None, rep: int) -> dict[str, Any]:
    dead = fleet.dead()
    if dead:
        raise RuntimeError(f"peer process(es) exited: {', '.join(dead)}")
    argv = list(case.argv)
    if argv[0] == "LOAD":
        head = [PY]
        if profile is not None:
            head += ["-m", "cProfile", "-o", str(profile / f"load-{case.key}-{rep}.prof")]
        argv = head + [str(HERE / "_hbone_loads.py")] + (["--uvloop"] if uvloop else []) + argv[1:]
    before = {n: fleet.cpu(n) for n in case.procs}
    t0 = time.perf_counter()
    rc, out, err = run_to_end(argv, timeout)
    wall = time.perf_counter() - t0
    cpu = {n: fleet.cpu(n) - before[n] for n in case.procs}
    text = out.decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {err.decode(errors='replace')[-800:]}")
    if case.key.startswith("hs-openssl"):
        m = re.search(r"(\d+) connections in [\d.]+s", text)
        if not m:
            raise RuntimeError(f"cannot parse s_time output: {text[-300:]}")
        ops = int(m.group(1))
        return {"ops": ops, "rate": ops / wall, "errors": 0, "wall": wall, "cpu": float("nan"), "procs": cpu}
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    result["procs"] = cpu
    return result


def build_cases(a: argparse.Namespace, addr: dict[str, str], certs: dict[str, Path]) -> list[Case]:
    total = a.bytes
    cli = str(certs["cli"])
    sink, srv = addr["sink"], addr["serve"]
    cases: list[Case] = []
    for n in (1, 8):
        bulk = ("--bytes", str(total), "--streams", str(n))
        cases += [
            Case(f"tcp-{n}", "bulk", "TCP direct (client → sink)", ("LOAD", "bulk-tcp", sink, *bulk), ("sink",)),
            Case(f"socat-{n}", "bulk", "socat TCP relay", ("LOAD", "bulk-tcp", addr["socat"], *bulk),
                 ("socat", "sink"), f"tcp-{n}"),
            Case(f"relay-{n}", "bulk", "Python asyncio TCP relay", ("LOAD", "bulk-tcp", addr["relay"], *bulk),
                 ("relay", "sink"), f"socat-{n}"),
            Case(f"fullhop-{n}", "bulk", "full hop: hbone forward → hbone serve → sink",
                 ("LOAD", "bulk-tcp", addr["fwd-sink"], *bulk), ("fwd-sink", "serve", "sink"), f"socat-{n}"),
            Case(f"tls-{n}", "bulk", "plain TLS (asyncio TLS client → TLS sink)",
                 ("LOAD", "bulk-tls", addr["tls-sink"], *bulk, "--certs", cli), ("tls-sink",), f"tcp-{n}"),
            Case(f"tunnel-{n}", "bulk", "tunnel, 3 processes: HboneClient → hbone serve → TCP sink",
                 ("LOAD", "bulk-hbone", srv, "--target", sink, *bulk, "--certs", cli), ("serve", "sink"), f"tls-{n}"),
            Case(f"tunnel-h2sink-{n}", "bulk", "tunnel, 2 processes: HboneClient → HTTP/2 server that is the sink",
                 ("LOAD", "bulk-hbone", addr["h2-sink"], "--target", sink, *bulk, "--certs", cli), ("h2-sink",),
                 f"tls-{n}"),
        ]  # fmt: skip
    lat = ("--count", str(a.lat_count), "--warmup", str(a.lat_count // 20))
    cases += [
        Case("lat-direct", "latency", "direct TCP → echo", ("LOAD", "latency", addr["echo"], *lat), ("echo",)),
        Case("lat-relays", "latency", "two Python TCP relays → echo", ("LOAD", "latency", addr["relay-a"], *lat),
             ("relay-a", "relay-b", "echo"), "lat-direct"),
        Case("lat-fullhop", "latency", "full hop: hbone forward → hbone serve → echo",
             ("LOAD", "latency", addr["fwd-echo"], *lat), ("fwd-echo", "serve", "echo"), "lat-direct"),
    ]  # fmt: skip
    secs = str(a.seconds)
    for n in (1, 50):
        cases.append(
            Case(f"churn-{n}", "rate", f"tunnels opened+closed, {n} in flight, one pooled connection",
                 ("LOAD", "churn", srv, "--target", sink, "--parallel", str(n), "--seconds", secs, "--certs", cli),
                 ("serve", "sink"))
        )  # fmt: skip
    cases.append(
        Case("churn-h2-50", "rate", "same, 50 in flight, bare HTTP/2 server answering 200 (no dial, authz, log)",
             ("LOAD", "churn", addr["h2-ok"], "--target", sink, "--parallel", "50", "--seconds", secs, "--certs", cli),
             ("h2-ok",), "churn-50")
    )  # fmt: skip
    if "s_server" in addr:
        c = certs["cli"]
        cases.append(
            Case("hs-openssl-1", "rate", "mTLS handshakes: openssl s_time → s_server, 1 at a time",
                 ("openssl", "s_time", "-connect", addr["s_server"], "-new", "-cert", str(c / "cert-chain.pem"),
                  "-key", str(c / "key.pem"), "-CAfile", str(c / "root-cert.pem"),
                  "-time", str(max(1, round(a.seconds)))),
                 ("s_server",))
        )  # fmt: skip
    for n in (1, 8):
        hs = ("--parallel", str(n), "--seconds", secs, "--certs", cli)
        cases += [
            Case(f"hs-tls-{n}", "rate", f"mTLS handshakes: asyncio TLS → TLS sink, {n} at a time",
                 ("LOAD", "handshake", "tls", addr["tls-sink"], *hs), ("tls-sink",),
                 "hs-openssl-1" if n == 1 and "s_server" in addr else None),
            Case(f"hs-hbone-{n}", "rate", f"mTLS handshakes + HTTP/2 preface: connect() → hbone serve, {n} at a time",
                 ("LOAD", "handshake", "hbone", srv, *hs), ("serve",), f"hs-tls-{n}"),
        ]  # fmt: skip
    return [c for c in cases if not a.only or any(s in c.key for s in a.only)]


def start_fleet(fleet: Fleet, a: argparse.Namespace, certs: dict[str, Path], profile: Path | None) -> dict[str, str]:
    uv = ["--uvloop"] if a.uvloop else []
    ready = r"READY (\d+)"

    def peer(*args: str, profile_as: str | None = None) -> list[str]:
        head = [PY]
        if profile is not None and profile_as is not None:
            head += ["-m", "cProfile", "-o", str(profile / f"{profile_as}.prof")]
        return [*head, str(HERE / "_hbone_peers.py"), *uv, *args]

    addr: dict[str, str] = {}
    addr["sink"] = fleet.start("sink", peer("sink"), ready)
    addr["echo"] = fleet.start("echo", peer("echo"), ready)
    addr["tls-sink"] = fleet.start("tls-sink", peer("tls-sink", "--certs", str(certs["srv"])), ready)
    addr["h2-ok"] = fleet.start("h2-ok", peer("h2-ok", "--certs", str(certs["srv"]), profile_as="h2-ok"), ready)
    addr["h2-sink"] = fleet.start("h2-sink", peer("h2-sink", "--certs", str(certs["srv"]), profile_as="h2-sink"), ready)
    addr["relay"] = fleet.start("relay", peer("relay", "--to", addr["sink"]), ready)
    addr["relay-b"] = fleet.start("relay-b", peer("relay", "--to", addr["echo"]), ready)
    addr["relay-a"] = fleet.start("relay-a", peer("relay", "--to", addr["relay-b"]), ready)
    socat_port = _free_port()
    fleet.start(
        "socat",
        ["socat", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr", f"TCP:{addr['sink']},nodelay"],
        None,
    )
    addr["socat"] = _wait_listening(socat_port)
    serve = ["cli", "serve", "--certs", str(certs["srv"]), "--listen", "127.0.0.1:0", "--authz", "allow-all",
             *NO_ADMIN]  # fmt: skip
    addr["serve"] = fleet.start("serve", peer(*serve, profile_as="serve"), r"listening mtls=([\d.]+:\d+)")
    for name, target in (("fwd-sink", addr["sink"]), ("fwd-echo", addr["echo"])):
        fwd = ["cli", "forward", "--listen", "127.0.0.1:0", "--target", target, "--via", addr["serve"],
               "--expect-identity", "spiffe://cluster.local/ns/bench/sa/server", *NO_ADMIN]  # fmt: skip
        addr[name] = fleet.start(
            name, peer(*fwd, "--certs", str(certs["cli"]), profile_as=name), r"hbone forward: listening ([\d.]+:\d+)"
        )
    if shutil.which("openssl"):
        port = _free_port()
        s = certs["srv"]
        fleet.start(
            "s_server",
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(s / "cert-chain.pem"),
             "-key", str(s / "key.pem"), "-CAfile", str(s / "root-cert.pem"), "-Verify", "1", "-quiet",
             "-num_tickets", "0"],
            None,
        )  # fmt: skip
        addr["s_server"] = _wait_listening(port)
    return addr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> str:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


# --- report ------------------------------------------------------------------------------------------------------


def _three(xs: Sequence[float], fmt: str) -> str:
    if not xs:
        return "—"
    return " / ".join(format(v, fmt) for v in (min(xs), statistics.median(xs), max(xs)))


def _median(xs: Iterable[float]) -> str:
    v = list(xs)
    return f"{statistics.median(v):.0f}" if v else "—"


def _ratio(xs: Sequence[float]) -> str:
    if not xs:
        return "—"
    med = statistics.median(xs)
    return f"{med:.2f}x [{min(xs):.2f}-{max(xs):.2f}]" if len(xs) > 1 else f"{med:.2f}x"


class Report:
    def __init__(self, cases: list[Case], results: dict[str, Outcome]) -> None:
        self.cases = {c.key: c for c in cases}
        self.results = results

    def values(self, key: str, metric: str) -> dict[int, float]:
        """Per-repeat values of a metric: MB/s for bulk, ops/s for rate, µs for latency percentiles."""
        out: dict[int, float] = {}
        for r in self.results.get(key, Outcome()).runs:
            if metric == "mbps":
                out[r["rep"]] = r["bytes"] / r["wall"] / MB
            else:
                out[r["rep"]] = float(r[metric])
        return out

    def paired(self, key: str, base: str, metric: str, minus: str | None = None) -> list[float]:
        """Per-repeat ratios key/base; with `minus`, of the values above that case's (added latency)."""
        a, b = self.values(key, metric), self.values(base, metric)
        m = self.values(minus, metric) if minus else {}
        out = []
        for rep in sorted(set(a) & set(b)):
            if minus:
                if rep not in m or b[rep] - m[rep] <= 0:
                    continue
                out.append((a[rep] - m[rep]) / (b[rep] - m[rep]))
            elif b[rep] > 0:
                out.append(a[rep] / b[rep])
        return out

    def cpu(self, key: str, per: str) -> str:
        """Median CPU of each process, per GB (bulk) or in ms per op (rate)."""
        runs = self.results.get(key, Outcome()).runs
        if not runs:
            return ""
        cols: dict[str, list[float]] = {"client": []}
        for r in runs:
            unit = r["bytes"] / 1e9 if per == "GB" else r["ops"] / 1000.0
            if unit <= 0:
                continue
            cols["client"].append(r["cpu"] / unit)
            for n, v in r["procs"].items():
                cols.setdefault(n, []).append(v / unit)
        digits = 2 if per == "GB" else 3  # ms per tunnel: the A/Bs of per-tunnel cuts need the third decimal
        return " · ".join(f"{n} {statistics.median(v):.{digits}f}" for n, v in cols.items() if v and v[0] == v[0])

    def err(self, key: str) -> str:
        errs = self.results.get(key, Outcome()).errors
        return f" ⚠ {len(errs)} failed: {errs[0][:120]}" if errs else ""

    def markdown(self, title: str) -> str:
        lines = [f"### {title}", ""]
        bulk = [c for c in self.cases.values() if c.group == "bulk"]
        if bulk:
            lines += ["**Bulk throughput** (MB/s, min / median / max; ratio = median of per-repeat ratios [min-max]; "
                      "CPU = median CPU-seconds per GB by process)", "",
                      "| path | streams | MB/s | vs | ratio | CPU s/GB |", "|---|---:|---|---|---|---|"]  # fmt: skip
            for c in bulk:
                streams = c.key.rsplit("-", 1)[1]
                v = list(self.values(c.key, "mbps").values())
                ratio = _ratio(self.paired(c.key, c.baseline, "mbps")) if c.baseline else ""
                vs = c.baseline or ""
                row = f"| {c.label}{self.err(c.key)} | {streams} | {_three(v, '.0f')} | {vs} | {ratio} |"
                lines.append(f"{row} {self.cpu(c.key, 'GB')} |")
            lines.append("")
        lat = [c for c in self.cases.values() if c.group == "latency"]
        if lat:
            lines += ["**1 KiB request/response latency** (µs; median of repeats, p99 as min / median / max; "
                      "added = p99 minus direct TCP's p99 in the same repeat)", "",
                      "| path | p50 | p90 | p99 | added p99 |", "|---|---:|---:|---|---:|"]  # fmt: skip
            for c in lat:
                p50, p90 = self.values(c.key, "p50").values(), self.values(c.key, "p90").values()
                p99 = list(self.values(c.key, "p99").values())
                added = ""
                if c.baseline:
                    d, b = self.values(c.key, "p99"), self.values(c.baseline, "p99")
                    diffs = [d[r] - b[r] for r in d if r in b]
                    added = f"{statistics.median(diffs):.0f}" if diffs else ""
                lines.append(f"| {c.label}{self.err(c.key)} | {_median(p50)} | {_median(p90)} | "
                             f"{_three(p99, '.0f')} | {added} |")  # fmt: skip
            lines.append("")
        rate = [c for c in self.cases.values() if c.group == "rate"]
        if rate:
            lines += ["**Tunnels and handshakes per second** (min / median / max; CPU = median CPU-ms per "
                      "operation by process)", "",
                      "| case | per second | vs | ratio | CPU ms/op |", "|---|---|---|---|---|"]  # fmt: skip
            for c in rate:
                v = list(self.values(c.key, "rate").values())
                ratio = _ratio(self.paired(c.key, c.baseline, "rate")) if c.baseline else ""
                lines.append(f"| {c.label}{self.err(c.key)} | {_three(v, '.0f')} | {c.baseline or ''} | {ratio} | "
                             f"{self.cpu(c.key, 'op')} |")  # fmt: skip
            lines.append("")
        lines += self.targets()
        return "\n".join(lines)

    def targets(self) -> list[str]:
        rows = [
            ("one tunnel stream vs plain TLS stream: like for like (2 processes, tunnel-h2sink-1)", "≥ 0.90x",
             self.paired("tunnel-h2sink-1", "tls-1", "mbps"), 0.9, True),
            ("one tunnel stream vs plain TLS stream: via hbone serve to a TCP sink (3 processes, tunnel-1)",
             "≥ 0.90x", self.paired("tunnel-1", "tls-1", "mbps"), 0.9, True),
            ("full hop vs socat TCP relay, 1 stream", "≥ 0.40x", self.paired("fullhop-1", "socat-1", "mbps"), 0.4,
             True),
            ("full hop vs socat TCP relay, 8 streams", "(info)", self.paired("fullhop-8", "socat-8", "mbps"), None,
             True),
            ("added p99: full hop vs two Python relays", "≤ 1.50x",
             self.paired("lat-fullhop", "lat-relays", "p99", minus="lat-direct"), 1.5, False),
        ]  # fmt: skip
        out = ["**Targets** (same run)", "", "| target | goal | measured | met |", "|---|---|---|---|"]
        for name, goal, xs, limit, higher in rows:
            if not xs:
                continue
            med = statistics.median(xs)
            met = "" if limit is None else ("yes" if (med >= limit if higher else med <= limit) else "**no**")
            out.append(f"| {name} | {goal} | {_ratio(xs)} | {met} |")
        churn = list(self.values("churn-50", "rate").values())
        if churn:
            med = statistics.median(churn)
            met = "yes" if med >= 5000 else "**no**"
            out.append(f"| tunnels opened+closed/s, 50 in flight, one connection | ≥ 5000/s | "
                       f"{med:.0f}/s [{min(churn):.0f}-{max(churn):.0f}] | {met} |")  # fmt: skip
        return [*out, ""]


# --- main ----------------------------------------------------------------------------------------------------------


def _profiles(profile: Path, top: int = 25) -> str:
    import io
    import pstats

    parts = []
    for path in sorted(profile.glob("*.prof")):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
        parts.append(f"#### {path.name}\n```\n{buf.getvalue().strip()}\n```")
    return "\n\n".join(parts)


def _versions() -> str:
    from importlib.metadata import version

    libs = ", ".join(f"{n} {version(n)}" for n in ("h2", "hyperframe", "hpack", "uvloop"))
    return f"Python {platform.python_version()}, {libs}, {os.cpu_count()} CPUs, {platform.machine()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run (~1 min)")
    parser.add_argument("--uvloop", action="store_true", help="run every Python component on uvloop")
    parser.add_argument("--repeats", type=int, help="repeats per case (default 3; --quick: 1)")
    parser.add_argument("--bytes", type=int, help="bytes per bulk case, over all streams (default 400 MB)")
    parser.add_argument("--seconds", type=float, help="duration of each rate case (default 3)")
    parser.add_argument("--lat-count", type=int, help="round trips per latency case (default 10000)")
    parser.add_argument("--case-timeout", type=float, default=120.0, help="time limit of one case (seconds)")
    parser.add_argument("--only", nargs="*", default=[], help="run the cases whose key contains one of these")
    parser.add_argument("--profile", type=Path, help="cProfile hbone serve/forward and the loads into this dir")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, certificates)")
    a = parser.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.bytes = a.bytes or (48 * MB if a.quick else 400 * MB)
    a.seconds = a.seconds or (1.0 if a.quick else 3.0)
    a.lat_count = a.lat_count or (1000 if a.quick else 10000)
    if a.profile is not None:
        a.profile = a.profile.resolve()
        a.profile.mkdir(parents=True, exist_ok=True)

    from hbone.testing import TestCA

    workdir = Path(tempfile.mkdtemp(prefix="hbone-bench-"))
    ca = TestCA()
    certs = {"srv": ca.write(workdir / "srv", "bench", "server"), "cli": ca.write(workdir / "cli", "bench", "client")}
    fleet = Fleet(workdir)
    # SIGTERM must still stop the fleet: turn it into the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: dict[str, Outcome] = {}
    started = time.monotonic()
    try:
        addr = start_fleet(fleet, a, certs, a.profile)
        cases = build_cases(a, addr, certs)
        # One small untimed pass first: pooled connections dialled, code paths and caches warm in every process.
        small = argparse.Namespace(**{**vars(a), "bytes": 8 * MB, "lat_count": 200, "seconds": 0.3})
        for case in build_cases(small, addr, certs):
            try:
                run_case(fleet, case, a.uvloop, a.case_timeout, None, -1)
            except (RuntimeError, ValueError, KeyError) as e:
                print(f"[warm-up] {case.key}: FAILED {e}", file=sys.stderr, flush=True)
        for rep in range(a.repeats):
            for case in cases:
                out = results.setdefault(case.key, Outcome())
                try:
                    r = run_case(fleet, case, a.uvloop, a.case_timeout, a.profile, rep)
                except (RuntimeError, ValueError, KeyError) as e:
                    out.errors.append(str(e))
                    print(f"[{rep + 1}/{a.repeats}] {case.key}: FAILED {e}", file=sys.stderr, flush=True)
                    continue
                r["rep"] = rep
                out.runs.append(r)
                brief = {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}
                print(f"[{rep + 1}/{a.repeats}] {case.key}: {brief}", file=sys.stderr, flush=True)
    finally:
        fleet.stop()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    loop = "uvloop" if a.uvloop else "asyncio"
    mode = "quick" if a.quick else "full"
    title = f"{loop} ({mode}: {a.repeats} repeats, {a.bytes // MB} MB per bulk case, {time.strftime('%Y-%m-%d')})"
    text = f"{Report(cases, results).markdown(title)}\n_{_versions()}; {time.monotonic() - started:.0f} s._\n"
    print(text)
    if a.markdown is not None:
        a.markdown.write_text(text)
    if a.profile is not None:
        print(_profiles(a.profile))
    return 1 if any(o.errors for o in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
