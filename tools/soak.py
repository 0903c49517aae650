#!/usr/bin/env python3
"""Soak: many tunnels through `hbone forward` -> `hbone serve` (real processes, mTLS, generated certificates) to
an upstream in this process, with random sizes, half-closes and resets from either side, many at once.

    python tools/soak.py --tunnels 10000 --concurrency 200        # the long run (README figures)
    python tools/soak.py --tunnels 300 --seed 7                   # what CI runs (tests/integration/test_soak.py)

Every tunnel carries a header naming it, then seeded pseudo-random bytes each way, and ends in one of five ways:
  up-then-down   the client sends everything and half-closes; the upstream answers after EOF
  both-ways      both sides send at once and half-close when done
  server-first   the upstream answers and half-closes first; the client sends afterwards
  client-reset   the client aborts (RST) part-way through its upload
  server-reset   the upstream aborts (RST) part-way through its answer
A tunnel of the first three kinds must complete with both SHA-256 digests intact; a reset tunnel must end (no
hang) and whatever arrived must be an exact prefix of what was sent. Nothing is lost: every tunnel is accounted
for. Afterwards the open fds of both processes must return to their baseline. Exit 1 on any failure, with the
seed to reproduce it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hbone.testing import TestCA  # noqa: E402

KINDS = ("up-then-down", "both-ways", "server-first", "client-reset", "server-reset")
RESETS = frozenset({"client-reset", "server-reset"})
_HEAD = struct.Struct("!QIIIB")  # tunnel id, up size, down size, where the reset cuts, kind index
FD_SLACK = 4  # fds a process may keep after the run besides pooled connections (a log file, a timer's socket)
POOL_STREAMS = 100  # streams per pooled HBONE connection (the client's default): one fd each side per 100 tunnels


@dataclass(frozen=True)
class Plan:
    tunnel: int
    kind: str
    up: int
    down: int
    cut: int  # bytes the resetting side sends before its RST


def plan(seed: int, tunnel: int, max_size: int) -> Plan:
    rng = random.Random(f"{seed}/{tunnel}")
    kind = rng.choice(KINDS)

    def size() -> int:  # log-uniform: mostly small, sometimes up to max_size
        return 0 if rng.random() < 0.05 else int(2 ** rng.uniform(0, max(max_size.bit_length() - 1, 0)))

    up, down = size(), size()
    cut = rng.randint(0, up if kind == "client-reset" else down)
    return Plan(tunnel, kind, up, down, cut)


def payload(seed: int, tunnel: int, direction: str, n: int) -> bytes:
    return random.Random(f"{seed}/{tunnel}/{direction}").randbytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class Report:
    seed: int
    tunnels: int
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fds: dict[str, dict[str, int]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, object]:
        out = asdict(self)
        out["outcomes"] = dict(self.outcomes)
        out["failures"] = self.failures[:20]
        out["tunnels_per_s"] = round(self.tunnels / self.seconds, 1) if self.seconds else 0
        return out


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0), the way a crashed or killed peer ends a connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Read to EOF (or until more than `limit` bytes arrived: the excess shows up as a digest mismatch)."""
    chunks, got = [], 0
    while got <= limit:
        chunk = await reader.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def _send_and_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


class Upstream:
    """The destination: checks what each tunnel uploaded against what its client sent, and answers."""

    def __init__(self, seed: int, report: Report) -> None:
        self.seed = seed
        self.report = report
        self.open = 0  # connections being handled: must return to 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await self._handle(reader, writer)
        finally:
            self.open -= 1
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(_HEAD.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # a client that reset before its header arrived: its own side accounts for the tunnel
        tid, up, down, cut, k = _HEAD.unpack(head)
        kind = KINDS[k]
        sent_up = payload(self.seed, tid, "up", up)
        answer = payload(self.seed, tid, "down", down)
        try:
            if kind == "server-reset":
                writer.write(answer[:cut])
                await writer.drain()
                _rst(writer)
                return
            if kind == "server-first":
                await _send_and_close(writer, answer)
                got = await _read_all(reader, up)
            elif kind == "both-ways":
                sender = asyncio.ensure_future(_send_and_close(writer, answer))
                try:
                    got = await _read_all(reader, up)
                finally:
                    await sender
            else:
                got = await _read_all(reader, up)
                if kind == "up-then-down":
                    await _send_and_close(writer, answer)
            if kind == "client-reset":
                if not sent_up.startswith(got):
                    self.report.failures.append(f"tunnel {tid} ({kind}): upstream got bytes that were never sent")
                return
            if got != sent_up:
                self.report.failures.append(
                    f"tunnel {tid} ({kind}): upstream got {len(got)} bytes sha256 {_sha(got)}, "
                    f"client sent {len(sent_up)} sha256 {_sha(sent_up)}"
                )
            await _read_all(reader, 0)  # wait for the client to close after reading our answer
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if kind not in RESETS:
                self.report.failures.append(f"tunnel {tid} ({kind}): upstream connection broke: {exc!r}")


async def run_tunnel(port: int, seed: int, p: Plan, report: Report, tunnel_timeout: float) -> None:
    """One tunnel from the client side; its outcome is always counted (completed, reset, broken or hung)."""
    up = payload(seed, p.tunnel, "up", p.up)
    down = payload(seed, p.tunnel, "down", p.down)
    outcome = "broken"
    what = f"tunnel {p.tunnel} ({p.kind}, up {p.up}, down {p.down}, cut {p.cut})"
    try:
        async with asyncio.timeout(tunnel_timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(_HEAD.pack(p.tunnel, p.up, p.down, p.cut, KINDS.index(p.kind)))
                if p.kind == "client-reset":
                    writer.write(up[: p.cut])
                    await writer.drain()
                    _rst(writer)
                    outcome = "reset"
                    return
                if p.kind == "server-first":
                    got = await _read_all(reader, p.down)
                    await _send_and_close(writer, up)
                else:
                    await _send_and_close(writer, up)
                    got = await _read_all(reader, p.down)
                if p.kind == "server-reset":
                    if not down.startswith(got):
                        report.failures.append(f"{what}: the client got bytes that were never sent")
                    outcome = "reset"
                    return
                if got == down:
                    outcome = "completed"
                else:
                    report.failures.append(
                        f"{what}: the client got {len(got)} bytes sha256 {_sha(got)}, "
                        f"the upstream sent {len(down)} sha256 {_sha(down)}"
                    )
            finally:
                writer.transport.abort()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        if p.kind in RESETS:
            outcome = "reset"
        else:
            report.failures.append(f"{what}: {exc!r}")
    except TimeoutError:
        report.failures.append(f"{what}: no end within {tunnel_timeout} s")
        outcome = "hung"
    finally:
        report.outcomes[outcome] += 1


# --- the two processes ----------------------------------------------------------------------------------------------


class Proc:
    """A child `hbone` process whose stderr goes to a file (an unread pipe would block it under load)."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self._args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready: str, wait_s: float = 30) -> re.Match[str]:
        self.proc = proc = await asyncio.create_subprocess_exec(
            # admin ports off: two daemons here (and other users' processes) must not share the fixed defaults
            sys.executable, "-m", "hbone.cli", *self._args, "--admin", "off", "--metrics", "off", "--readiness", "off",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=self._out,
        )  # fmt: skip
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            m = re.search(ready, self.log.read_text(errors="replace"))
            if m:
                return m
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)  # polling a log file: there is no event to wait on
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text(errors='replace')[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._out.close()


async def soak(tunnels: int, *, concurrency: int, seed: int, max_size: int, tunnel_timeout: float = 120) -> Report:
    report = Report(seed, tunnels)
    with tempfile.TemporaryDirectory(prefix="hbone-soak-") as tmp:
        base = Path(tmp)
        ca = TestCA()
        ca.write(base / "client", "soak", "client")
        ca.write(base / "server", "soak", "server")
        upstream = Upstream(seed, report)
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        up_port = server.sockets[0].getsockname()[1]
        serve = Proc("hbone serve", ["serve", "--certs", str(base / "server"), "--listen", "127.0.0.1:0"],
                     base / "serve.log")  # fmt: skip
        forward: Proc | None = None
        try:
            m = await serve.start(r"listening mtls=127\.0\.0\.1:(\d+)")
            forward = Proc("hbone forward", [
                "forward", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{up_port}",
                "--via", f"127.0.0.1:{m.group(1)}", "--certs", str(base / "client"),
                "--expect-identity", str(ca.spiffe("soak", "server")),
            ], base / "forward.log")  # fmt: skip
            fport = int((await forward.start(r"hbone forward: listening [^:]+:(\d+)")).group(1))
            procs = {"serve": serve, "forward": forward}
            baseline = {k: p.fds() for k, p in procs.items()}
            peak = dict.fromkeys(procs, 0)
            rss = dict.fromkeys(procs, 0.0)
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    for k, p in procs.items():
                        with contextlib.suppress(OSError):
                            peak[k] = max(peak[k], p.fds())
                            rss[k] = max(rss[k], p.rss_mb())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)

            sampler = asyncio.ensure_future(sample())
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with gate:
                    await run_tunnel(fport, seed, plan(seed, i, max_size), report, tunnel_timeout)

            start = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(tunnels)))
            report.seconds = round(time.monotonic() - start, 2)
            # Every tunnel has ended on the client side; the processes release their sockets asynchronously.
            slack = FD_SLACK + -(-concurrency // POOL_STREAMS)
            deadline = time.monotonic() + 30
            final = {k: p.fds() for k, p in procs.items()}
            while time.monotonic() < deadline and (upstream.open or any(final[k] > baseline[k] + slack for k in procs)):
                await asyncio.sleep(0.2)  # polling /proc: there is no event for "the peer closed its fds"
                final = {k: p.fds() for k, p in procs.items()}
            stop.set()
            await sampler
            report.fds = {k: {"baseline": baseline[k], "peak": peak[k], "final": final[k]} for k in procs}
            report.peak_rss_mb = {k: round(v, 1) for k, v in rss.items()}
            for k in procs:
                if final[k] > baseline[k] + slack:
                    report.failures.append(f"{k}: {final[k]} fds open after the run, baseline {baseline[k]}")
            if upstream.open:
                report.failures.append(f"upstream: {upstream.open} connections still open after the run")
        finally:
            if forward is not None:
                await forward.stop()
            await serve.stop()
            server.close()
            await server.wait_closed()
        lost = tunnels - sum(report.outcomes.values())
        if lost:
            report.failures.append(f"{lost} tunnels have no outcome")
        for name in ("serve.log", "forward.log"):
            text = (base / name).read_text(errors="replace")
            if "Traceback" in text:
                report.failures.append(f"{name} has a traceback: {text[text.index('Traceback') :][:1500]}")
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--max-size", type=int, default=1 << 20, help="largest upload/download of one tunnel")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    report = asyncio.run(soak(args.tunnels, concurrency=args.concurrency, seed=seed, max_size=args.max_size))
    print(json.dumps(report.summary(), indent=2))
    if not report.ok:
        print(f"soak FAILED (reproduce with --seed {seed})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
