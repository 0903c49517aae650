"""Where an idle xDS client's server memory goes: tracemalloc attribution per client, by file:line.

    .venv/bin/python tools/bench/xds_memprobe.py                  # N = 300, top 25 lines
    .venv/bin/python tools/bench/xds_memprobe.py --clients 100 --top 40 --types

The control plane (`microxds.server.app.ControlPlane`, the same composition root `microxds serve` uses) runs in
this process on 127.0.0.1 with the benchmark's 1,000 clusters + 1,000 endpoint sets (`xds_bench.config`). N raw
Delta clients (`xds_bench.worker`) connect from a child process, subscribe to everything, ACK and go idle. Then,
with the server idle, a tracemalloc snapshot is compared with one taken before the clients connected and the
growth is divided by N. `--types` adds a census of live gc-tracked objects by type (per client), which names
*what* the bytes are when a line (e.g. inside h2) is too generic.

tracemalloc sees Python allocations only: upb arenas, libuv handles and malloc fragmentation are in RSS (printed
too, after a `malloc_trim`) but not in the table. Use `xds_bench.py` for the honest RSS figure; this is for
finding the items.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import multiprocessing as mp
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xds_bench  # sibling script (tools/bench is not a package)

from microxds.server.app import ControlPlane, ServeOptions


def trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS is then only indicative


def short(filename: str) -> str:
    """`h2/connection.py` rather than a bare `connection.py`: several packages have one."""
    path = Path(filename)
    return f"{path.parent.name}/{path.name}"


def type_census() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


async def probe(n: int, top: int, types: bool, frames: int) -> None:
    with tempfile.TemporaryDirectory(prefix="xds-memprobe-") as tmp:
        cfg = Path(tmp) / "xds.json"
        xds_bench.write_config(cfg, 0, 0)
        opts = ServeOptions(config=cfg, listen="127.0.0.1:0", streams_per_second=500, stream_burst=500,
                            max_in_flight=200, release_memory=False)  # fmt: skip
        plane = ControlPlane(opts)
        await plane.start()
        port = plane.addresses["plaintext"][1]
        loop = asyncio.get_running_loop()
        ctx = mp.get_context("spawn")
        commands, results = ctx.Queue(), ctx.Queue()
        gc.collect()
        trim()
        rss0 = xds_bench.rss_kib(os.getpid())
        census0 = type_census() if types else Counter()
        tracemalloc.start(frames)
        snap0 = tracemalloc.take_snapshot()
        worker = ctx.Process(target=xds_bench.worker, args=(port, 0, n, commands, results), daemon=True)
        worker.start()
        msg = await loop.run_in_executor(None, results.get, True, 600)
        assert msg[0] == "synced", msg
        print(f"{n} clients synced in {msg[1]:.2f} s ({msg[2]} connect retries)")
        await asyncio.sleep(2.0)  # idle: send buffers drained, ACKs processed
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        trim()
        rss1 = xds_bench.rss_kib(os.getpid())
        stats = snap1.compare_to(snap0, "lineno" if frames == 1 else "traceback")
        total = sum(s.size_diff for s in stats)
        print(f"traced growth: {total / n / 1024:.1f} KiB per client; RSS after trim: {(rss1 - rss0) / n:.1f} KiB "
              f"per client (tracemalloc's own overhead included)")  # fmt: skip
        print(f"{'KiB/client':>10} {'blocks/client':>13}  where")
        for s in stats[:top]:
            where = " <- ".join(f"{short(f.filename)}:{f.lineno}" for f in s.traceback)
            print(f"{s.size_diff / n / 1024:10.2f} {s.count_diff / n:13.1f}  {where}")
        if types:
            grown = type_census() - census0
            print(f"\n{'objects/client':>14}  type (gc-tracked, grown)")
            for name, count in grown.most_common(top):
                print(f"{count / n:14.1f}  {name}")
        commands.put(("stop",))
        await loop.run_in_executor(None, worker.join, 30)
        await plane.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1, help="traceback depth (1: group by file:line)")
    ap.add_argument("--types", action="store_true", help="also count live objects by type")
    args = ap.parse_args(argv)
    started = time.monotonic()
    asyncio.run(probe(args.clients, args.top, args.types, args.frames))
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
