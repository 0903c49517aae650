"""`hbone serve` (a real process, TLS and h2c) under HTTP/2 attacks: each asserts the process survives, its RSS and
open fds stay under a stated bound and come back, and a legitimate tunnel started during the attack completes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from hbone.errors import H2ErrorCode
from hbone.testing import TestCA, start_echo_server
from tests.adversarial.harness import (
    HBONE,
    SERVE_READY,
    RawClient,
    Target,
    check_bounds,
    legit_tunnel,
    process,
    serve_config,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def bob(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("certs") / "bob"
    ca.write(base, "ns", "bob")
    return base


@pytest.fixture(scope="module")
def alice_ctx(ca: TestCA) -> ssl.SSLContext:
    return ca.mesh_tls("ns", "alice").client_context()


@contextlib.asynccontextmanager
async def serve(bob: Path, tmp_path: Path) -> AsyncIterator[tuple[Target, int, int, str]]:
    echo, echo_port = await start_echo_server()
    try:
        argv = [*HBONE, "serve", "--certs", str(bob), "--config", str(serve_config(tmp_path))]
        async with process(argv, SERVE_READY, 2) as target:
            mtls, h2c = target.ports
            await legit_tunnel(h2c, f"127.0.0.1:{echo_port}")  # warm up: the baseline includes one tunnel's imports
            yield target, mtls, h2c, f"127.0.0.1:{echo_port}"
    finally:
        echo.close()


def silent_upstream() -> socket.socket:
    """A listening socket that never accepts: once its backlog is full, dials to it hang (a silent upstream)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    return sock


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
async def test_rapid_reset(bob: Path, tmp_path: Path, alice_ctx: ssl.SSLContext, tls: bool) -> None:
    upstream = silent_upstream()
    headers = [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{upstream.getsockname()[1]}".encode())]
    async with serve(bob, tmp_path) as (target, mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        async with target.watched():
            attacker = await RawClient.open(mtls if tls else h2c, alice_ctx if tls else None)
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            for _ in range(20):  # 20 batches of 100 streams opened and reset at once (CVE-2023-44487)
                for _ in range(100):
                    sid = attacker.h2.get_next_available_stream_id()
                    attacker.h2.send_headers(sid, headers)
                    attacker.h2.reset_stream(sid, H2ErrorCode.CANCEL)
                await attacker.flush()
            assert await attacker.goaway() == H2ErrorCode.ENHANCE_YOUR_CALM
            attacker.close()
            await legit
        check_bounds(target, base_rss, base_fds, "rapid reset " + ("tls" if tls else "h2c"))
        assert await target.settled_fds(base_fds) <= base_fds + 12  # every reset stream's dial was released
        await legit_tunnel(h2c, echo)
    upstream.close()


async def test_continuation_flood_and_hpack_bomb(bob: Path, tmp_path: Path) -> None:
    async with serve(bob, tmp_path) as (target, _mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        async with target.watched():
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            flood = await RawClient.open(h2c)
            frames = [HeadersFrame(1, Encoder().encode([(":method", "CONNECT"), (":authority", echo)]))]
            frames += [ContinuationFrame(1, b"\x00\x01x\x01y" * 100) for _ in range(5000)]
            await flood.flush(b"".join(f.serialize() for f in frames))
            assert await flood.goaway() is not None  # a connection error, not 5000 frames buffered
            flood.close()
            bomb = await RawClient.open(h2c)
            enc = Encoder()
            block = enc.encode([(":method", "CONNECT"), (":authority", echo), ("x-bomb", "a" * 4000)])
            block += b"\xbe" * 20_000  # 20,000 references to the 4 KB entry: 80 MB of headers from 24 KB
            await bomb.flush(HeadersFrame(1, block, flags=["END_HEADERS"]).serialize())
            assert await bomb.goaway() is not None
            bomb.close()
            await legit
        check_bounds(target, base_rss, base_fds, "CONTINUATION flood + HPACK bomb")
        assert await target.settled_fds(base_fds) <= base_fds + 12


async def test_settings_and_ping_floods_without_reading(bob: Path, tmp_path: Path) -> None:
    async with serve(bob, tmp_path) as (target, _mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        flood = (PingFrame(0, b"12345678").serialize() + SettingsFrame(0, {1: 4096}).serialize()) * 20_000
        async with target.watched():
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            attackers = [await RawClient.open(h2c) for _ in range(4)]
            for a in attackers:
                a.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                a.transport.pause_reading()  # never read the ACKs
                a.write(a.h2.data_to_send() + flood)  # 760 KB of control frames each
            await legit
            for a in attackers:
                a.transport.resume_reading()
                # GOAWAY, or a plain close when the GOAWAY was stuck behind the ACKs it never read.
                assert await a.goaway() in (H2ErrorCode.ENHANCE_YOUR_CALM, None)
                a.close()
        assert any("limit h2_control_flood tripped" in line for line in target.stderr), target.stderr[-5:]
        check_bounds(target, base_rss, base_fds, "SETTINGS+PING floods, not reading")
        assert await target.settled_fds(base_fds) <= base_fds + 12


async def test_zero_window_streams(bob: Path, tmp_path: Path) -> None:
    async with serve(bob, tmp_path) as (target, _mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        async with target.watched():
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            att = await RawClient.open(h2c)
            att.h2.update_settings({SettingsFrame.INITIAL_WINDOW_SIZE: 0})
            for _ in range(100):  # 100 tunnels whose echoes can never be sent back to us
                sid = att.h2.get_next_available_stream_id()
                att.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", echo.encode())])
                att.h2.send_data(sid, b"z" * 600)  # within the 64 KiB the client may send before any credit
            await att.flush()
            await legit
            await asyncio.sleep(0)  # the attacker's tunnels stay open, held by flow control
            check_bounds(target, base_rss, base_fds, "zero-window streams")
            att.close()
        assert await target.settled_fds(base_fds) <= base_fds + 12


async def test_idle_and_slowloris_connections(bob: Path, tmp_path: Path) -> None:
    async with serve(bob, tmp_path) as (target, mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        held: list[asyncio.StreamWriter] = []
        async with target.watched():
            for port, first in ((h2c, b""), (h2c, b"PRI * HTTP/2.0\r\n"), (mtls, b""), (mtls, b"\x16\x03\x01\x02")):
                for _ in range(100):  # idle, a partial preface, no ClientHello, a dribbled ClientHello
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(first)
                    held.append(w)
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            await legit
            # The attackers keep their sockets open: the server must close its side (2 s timeouts here).
            assert await target.settled_fds(base_fds, timeout=40) <= base_fds + 12
        for w in held:
            w.transport.abort()
        check_bounds(target, base_rss, base_fds, "idle + slowloris")


async def test_slow_and_oversized_frames(bob: Path, tmp_path: Path) -> None:
    async with serve(bob, tmp_path) as (target, _mtls, h2c, echo):
        base_rss, base_fds = target.rss(), target.fds()
        async with target.watched():
            legit = asyncio.create_task(legit_tunnel(h2c, echo))
            oversized = []
            for _ in range(20):  # each announces a 16 MiB frame (the limit is 1 MiB) and sends 64 KB of it
                a = await RawClient.open(h2c)
                await a.flush(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 65536)
                oversized.append(a)
            for a in oversized:
                assert await a.goaway() == H2ErrorCode.FRAME_SIZE_ERROR
                a.close()
            slow = await RawClient.open(h2c)
            slow.h2.send_headers(1, [(b":method", b"CONNECT"), (b":authority", echo.encode())])
            await slow.flush()
            body = b"s" * (1024 * 1024 - 16)
            frame = len(body).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + body
            for i in range(0, len(frame), 512):  # one 1 MiB DATA frame in 2048 pieces: linear reassembly
                slow.write(frame[i : i + 512])
                await asyncio.wait_for(slow.inbox.writable.wait(), 30)
            await legit
            slow.close()
        check_bounds(target, base_rss, base_fds, "slow + oversized frames")
        assert await target.settled_fds(base_fds) <= base_fds + 12
