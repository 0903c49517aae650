"""Shared pieces of the adversarial tests: real server processes, their RSS and fds from /proc, raw HTTP/2 attack
clients, and the legitimate tunnel / call that must keep working during an attack.

Bounds are generous on purpose (shared, noisy machines): they catch leaks and starvation, not milliseconds.
"""

# ruff: noqa: ASYNC109  (deadline arguments are the API of these helpers)
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events

from hbone.net.endpoints import connect
from hbone.net.settings import H2Settings
from tests.peers import NO_ADMIN, stop_process

MiB = 1024 * 1024
HBONE = [sys.executable, "-m", "hbone.cli"]
MICROXDS = [sys.executable, "-m", "microxds.cli"]
#: A peak RSS above baseline + this fails a test: without the limits the same attacks cost 250 MB - 1 GB.
RSS_BOUND = 120 * MiB
#: Open fds must come back to within this many of the baseline once an attack ends.
FD_SLACK = 12
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Target:
    """A server process under attack."""

    proc: asyncio.subprocess.Process
    ports: Sequence[int]
    peak_rss: int = 0
    peak_fds: int = 0
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.returncode is None and os.path.exists(f"/proc/{self.pid}")

    @contextlib.asynccontextmanager
    async def watched(self) -> AsyncIterator[Target]:
        """Sample RSS and fds every 20 ms while the block runs (peaks land in `peak_rss` / `peak_fds`)."""
        self.peak_rss, self.peak_fds = self.rss(), self.fds()

        async def sample() -> None:
            while True:
                with contextlib.suppress(OSError, ValueError):
                    self.peak_rss = max(self.peak_rss, self.rss())
                    self.peak_fds = max(self.peak_fds, self.fds())
                await asyncio.sleep(0.02)

        task = asyncio.create_task(sample())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settled_fds(self, baseline: int, timeout: float = 30.0) -> int:
        """Wait (bounded) until the open fds are back near `baseline`; return the last count."""
        deadline = asyncio.get_running_loop().time() + timeout
        count = self.fds()
        while count > baseline + FD_SLACK and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            count = self.fds()
        return count


@contextlib.asynccontextmanager
async def process(argv: Sequence[str], ready: str, nports: int, *, stdout: bool = False) -> AsyncIterator[Target]:
    """Start a server; `ready` is a regex over its stderr (or stdout) whose groups are the ports it bound."""
    if list(argv[:3]) == HBONE or (list(argv[:3]) == MICROXDS and "agent" in argv):
        argv = [*argv, *NO_ADMIN]  # never the fixed default admin ports (other tests and users run at once)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None and proc.stdout is not None
    source = proc.stdout if stdout else proc.stderr
    seen: list[str] = []
    ports: list[int] = []
    drains: list[asyncio.Task[None]] = []

    async def keep_draining(pipe: asyncio.StreamReader) -> None:  # an unread pipe would block the server's logging
        while line := await pipe.readline():
            if len(seen) < 5000:
                seen.append(line.decode(errors="replace"))

    try:
        if stdout:
            drains.append(asyncio.create_task(keep_draining(proc.stderr)))
        while len(ports) < nports:
            line = (await asyncio.wait_for(source.readline(), 30)).decode()
            if not line:
                raise AssertionError(f"{argv[2:4]} exited before it was ready: {''.join(seen)}")
            seen.append(line)
            ports += [int(p) for p in re.findall(ready, line)]
        drains.append(asyncio.create_task(keep_draining(source)))
        yield Target(proc, ports, stderr=seen)
    finally:
        await stop_process(proc, 15)
        for task in drains:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def legit_tunnel(port: int, target: str, size: int = 64 * 1024, ctx: ssl.SSLContext | None = None) -> None:
    """A real client's tunnel through the server under attack: `size` bytes echoed back intact, within 30 s."""
    payload = os.urandom(size)

    async def run() -> None:
        conn = await connect("127.0.0.1", port, ssl=ctx, settings=H2Settings.client(ping_interval=None))
        try:
            stream = await conn.open_stream([(":method", "CONNECT"), (":authority", target)])
            headers = dict(await stream.response_headers())
            assert headers[b":status"] == b"200", headers
            await stream.send(payload)
            stream.write_eof()
            got = bytearray()
            while chunk := await stream.read():
                got += chunk
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        finally:
            await conn.close()

    await asyncio.wait_for(run(), 30)


class _Inbox(asyncio.Protocol):
    """Keeps every received byte, even when the server's close resets the connection right after its GOAWAY."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()
        self.lost = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.changed.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class RawClient:
    """A hostile HTTP/2 client: stock h2 to build frames, raw writes, received bytes only scanned for GOAWAY."""

    def __init__(self, transport: asyncio.Transport, inbox: _Inbox) -> None:
        self.transport, self.inbox = transport, inbox
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None = None) -> RawClient:
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.create_connection(
            _Inbox, "127.0.0.1", port, ssl=ctx, server_hostname="" if ctx else None
        )
        return cls(transport, inbox)

    def write(self, data: bytes) -> None:
        if not self.inbox.lost:
            self.transport.write(data)

    async def flush(self, extra: bytes = b"") -> None:
        """Send what h2 queued plus `extra`; waits while the transport's buffer is full (never reads)."""
        self.write(self.h2.data_to_send() + extra)
        await asyncio.wait_for(self.inbox.writable.wait(), 30)

    async def goaway(self, timeout: float = 30.0) -> int | None:
        """Wait for the server's GOAWAY (its error code) or its close (None)."""

        async def run() -> int | None:
            pos = 0
            while True:
                buf = self.inbox.data
                while len(buf) - pos >= 9:
                    length = int.from_bytes(buf[pos : pos + 3], "big")
                    if len(buf) - pos < 9 + length:
                        break
                    if buf[pos + 3] == 0x7:  # GOAWAY: last stream id (4 bytes), then the error code
                        return int.from_bytes(buf[pos + 13 : pos + 17], "big")
                    pos += 9 + length
                if self.inbox.lost:
                    return None
                self.inbox.changed.clear()
                await self.inbox.changed.wait()

        return await asyncio.wait_for(run(), timeout)

    def close(self) -> None:
        self.transport.abort()


def check_bounds(target: Target, base_rss: int, base_fds: int, what: str, bound: int = RSS_BOUND) -> None:
    """The process survived and its peak RSS stayed under `bound` above the baseline; prints the figures (-s)."""
    assert target.alive(), f"{what}: the server died"
    grew = target.peak_rss - base_rss
    after = target.rss() - base_rss
    rss = f"peak RSS +{grew / MiB:.1f} MiB (base {base_rss / MiB:.0f} MiB), +{after / MiB:.1f} MiB after"
    print(f"\nMEASURED {what}: {rss}, peak fds {target.peak_fds} (base {base_fds})")
    assert grew < bound, f"{what}: peak RSS +{grew >> 20} MiB over the {bound >> 20} MiB bound"
    assert after < bound, f"{what}: RSS still +{after >> 20} MiB after the attack"


def serve_config(tmp: Path, extra: str = "") -> Path:
    """An `hbone serve` config for the attacks: short preface/handshake timeouts so tests need not wait 10 s."""
    path = tmp / "serve.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "h2c_listen: 127.0.0.1:0\n"
        "authorization: {mode: allow-all}\n"
        "dial_timeout: 5s\n"
        "http2: {preface_timeout: 2s, idle_timeout: 3s}\n"
        "limits: {handshake_timeout: 2s, grpc_connection_bytes: 16777216, grpc_process_bytes: 33554432}\n" + extra
    )
    return path


SERVE_READY = r"(?:mtls|h2c)=127\.0\.0\.1:(\d+)"
