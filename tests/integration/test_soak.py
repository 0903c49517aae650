"""The soak in CI: 300 tunnels through real `hbone forward` -> `hbone serve` processes (tools/soak.py; the
10,000-tunnel run is a documented command). The seed is random unless HBONE_SOAK_SEED is set, and printed on
failure. A second test proves the soak's checks catch corrupted, lost and hung tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest

from tools.soak import KINDS, Report, Upstream, plan, run_tunnel, soak

pytestmark = pytest.mark.timeout(240)


async def test_soak_300_tunnels() -> None:
    seed = int(os.environ.get("HBONE_SOAK_SEED", random.randrange(1 << 32)))
    report = await soak(300, concurrency=50, seed=seed, max_size=256 * 1024, tunnel_timeout=60)
    summary = report.summary()
    assert report.ok, f"soak failed; reproduce with: python tools/soak.py --tunnels 300 --seed {seed}\n{summary}"
    assert sum(report.outcomes.values()) == 300
    assert report.outcomes["completed"] > 0 and report.outcomes["reset"] > 0, summary


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter, corrupt_at: int | None) -> None:
    seen = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await src.read(65536):
            if corrupt_at is not None and seen <= corrupt_at < seen + len(chunk):
                i = corrupt_at - seen
                chunk = chunk[:i] + bytes([chunk[i] ^ 1]) + chunk[i + 1 :]
            seen += len(chunk)
            dst.write(chunk)
            await dst.drain()
        dst.write_eof()


async def test_soak_checks_catch_a_corrupting_or_silent_relay() -> None:
    """A relay that flips one byte of the download, and one that never answers: both must be reported."""
    seed = 5
    report = Report(seed, 2)
    upstream = Upstream(seed, report)
    up_server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]

    async def corrupting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", up_port)
        await asyncio.gather(_relay(reader, uw, None), _relay(ur, writer, 100))
        writer.close()
        uw.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallows the upload and never answers or closes
        await asyncio.Event().wait()

    relays = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (corrupting, silent)]
    try:
        tunnel = next(p for i in range(100) if (p := plan(seed, i, 4096)).kind == KINDS[0] and p.down > 200)
        await run_tunnel(relays[0].sockets[0].getsockname()[1], seed, tunnel, report, 10)
        assert report.outcomes["broken"] == 1 and "sha256" in report.failures[0], report.failures
        await run_tunnel(relays[1].sockets[0].getsockname()[1], seed, tunnel, report, 0.5)
        assert report.outcomes["hung"] == 1 and "no end within" in report.failures[1], report.failures
    finally:
        for s in (*relays, up_server):
            s.close()
