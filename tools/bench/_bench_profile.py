"""Profilers of `hbone_envoy_bench.py`, attached to the running proxies after the warm-up and stopped (SIGINT, on
which both write their files) before the fleet: py-spy on our CLIs (`--profile`: Python functions, optionally C
frames) and `perf record` on every proxy, ours and Envoy's (`--perf`: CPU by library — kernel, interpreter,
OpenSSL, libc, Envoy's own binary — for each process, the same way for both)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from hbone_bench import PY, Fleet


class Profilers:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.names: list[str] = []
        self.threads: dict[int, str] = {}  # perf reports thread ids: each thread's process, by fleet name

    def py_spy(self, names: list[str], out: Path, native_frames: bool) -> None:
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not Path(spy).exists():
            raise RuntimeError("--profile needs py-spy: source tools/venv.sh && ensure_venv test,bench")
        # --nonblocking reads the stacks without pausing the process; C frames need it paused (py-spy's rule)
        how = ["--native"] if native_frames else ["--nonblocking"]
        for name in names:
            pid = str(self.fleet.peers[name].proc.pid)
            argv = [
                spy,
                "record",
                "--pid",
                pid,
                "--rate",
                "250",
                *how,
                "--format",
                "raw",
                "-o",
                str(out / f"{name}.txt"),
            ]
            self.fleet.start(f"py-spy-{name}", argv, None)
            self.names.append(f"py-spy-{name}")

    def perf(self, names: list[str], out: Path) -> None:
        perf = shutil.which("perf")
        if perf is None:
            raise RuntimeError("--perf needs perf (Debian: linux-perf)")
        for name in names:
            pid = self.fleet.peers[name].proc.pid
            self.threads.update({int(t): name for t in os.listdir(f"/proc/{pid}/task")})
        pids = ",".join(str(self.fleet.peers[n].proc.pid) for n in names)
        self.fleet.start("perf", [perf, "record", "-q", "-F", "499", "-p", pids, "-o", str(out / "perf.data")], None)
        self.names.append("perf")

    def stop(self) -> None:
        for name in self.names:
            peer = self.fleet.peers[name]
            if peer.proc.poll() is None:
                peer.proc.send_signal(signal.SIGINT)
        for name in self.names:
            try:
                self.fleet.peers[name].proc.wait(30)
            except subprocess.TimeoutExpired:
                pass


# --- perf: CPU by library and process -------------------------------------------------------------------------

_PERF_ROW = re.compile(r"([\d.]+)%\s+(\d+):\S+\s+(\S+)")
_LIBRARIES = (
    ("kernel", ("[kernel",)),
    ("Python interpreter", ("libpython",)),
    ("OpenSSL", ("libcrypto", "libssl", "_ssl.")),
    ("libc", ("libc.so", "libm.so")),
    ("uvloop", ("loop.cpython",)),
    ("Envoy (BoringSSL inside)", ("envoy",)),
)


def _library(dso: str) -> str:
    for label, prefixes in _LIBRARIES:
        if dso.startswith(prefixes):
            return label
    return "other"


def perf_table(out: Path, threads: dict[int, str]) -> str:
    """Each proxy's samples split by library, from `perf report --sort pid,dso` (pid there is a thread id)."""
    try:
        text = subprocess.run(
            ["perf", "report", "-i", str(out / "perf.data"), "--no-children", "--sort", "pid,dso", "-g", "none",
             "--stdio"], check=False, capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf report failed: {e}"
    shares: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for m in _PERF_ROW.finditer(text):
        name = threads.get(int(m.group(2)))
        if name is not None:
            shares[name][_library(m.group(3))] += float(m.group(1))
    cols = [label for label, _ in _LIBRARIES] + ["other"]
    lines = ["| process | share of all samples | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, c in sorted(shares.items()):
        total = sum(c.values())
        cells = " | ".join(f"{100 * c[col] / total:.0f}%" if c.get(col) else "" for col in cols)
        lines.append(f"| {name} | {total:.1f}% | {cells} |")
    return "\n".join(lines)


# --- py-spy: top functions ------------------------------------------------------------------------------------

_LINE = re.compile(r":\d+\)$")
_IDLE = {"epoll_wait", "epoll_pwait"}  # with --native py-spy keeps samples of a loop waiting for events
_SYSCALLS = {"write", "read", "writev", "readv", "send", "recv", "sendmsg", "recvmsg", "connect", "accept4", "close"}


def _frame(f: str) -> str:
    """`func (path/to/file.py:123)` → `func (file.py)`: costs of one function over all its lines."""
    name, _, where = f.partition(" (")
    return f"{name} ({Path(_LINE.sub('', where.rstrip(')'))).name})" if where else name


def _layer(frame: str) -> str:
    """Where a sampled leaf frame runs: a shared library, the kernel via a system call, our Python, or C code."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if ".so" in where:
        lib = where.split(".so")[0]
        return f"system call ({name})" if lib == "libc" and name in _SYSCALLS else f"{lib} (C)"
    if where.endswith(".py"):
        return "Python code"
    return "uvloop (C)" if where.startswith(("loop.c", "sslproto", "handles")) else "CPython runtime (C)"


def summarise_profile(path: Path, top: int = 15) -> str:
    """Top functions of a py-spy `--format raw` file, by own samples and by samples under them; with C frames
    (`--native`) also own samples by layer (library, system call, Python)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1].partition(" (")[0] in _IDLE:
            continue
        total += n
        own[frames[-1]] += n
        layers[_layer(frames[-1])] += n
        for f in set(frames):
            under[f] += n
    if not total:
        return f"#### {path.stem}: no samples"
    rows = [f"#### {path.stem} ({total} samples while busy)", "", "| own % | function | | under % | function |",
            "|---:|---|---|---:|---|"]  # fmt: skip
    for (fo, no), (fu, nu) in zip(own.most_common(top), under.most_common(top), strict=False):
        rows.append(f"| {100 * no / total:.1f} | `{fo}` | | {100 * nu / total:.1f} | `{fu}` |")
    if any(".so" in f for f in own):
        by_layer = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in layers.most_common())
        rows += ["", f"own samples by layer: {by_layer}"]
    return "\n".join(rows)


def summarise_profiles(directory: Path) -> str:
    return "\n\n".join(summarise_profile(p) for p in sorted(directory.glob("*.txt")))
