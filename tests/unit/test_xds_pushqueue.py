"""Debounce with an injected clock, token bucket, and the stream driver over a fake (queue pair) stream."""

from __future__ import annotations

import asyncio

import pytest

from microxds.cache import LinearCache, Snapshot, SnapshotCache
from microxds.resources import CLUSTER, ENDPOINT
from microxds.server.delta import DeltaStream
from microxds.server.pushqueue import Debouncer, ManualClock, PushQueue, TokenBucket
from microxds.server.sotw import SotwStream
from tests.unit.test_xds_fixtures import FakeStream, cla, cluster, dreq, names_of, node, req


def test_debounce_fires_after_quiet_period() -> None:
    clock = ManualClock()
    fired: list[list[int]] = []
    d = Debouncer(fired.append, quiet=0.1, max_delay=1.0, clock=clock)
    d.trigger(1)
    clock.advance(0.05)
    d.trigger(2)
    clock.advance(0.09)
    assert fired == []  # only 0.09 s quiet so far
    clock.advance(0.02)
    assert fired == [[1, 2]]
    clock.advance(5)
    assert fired == [[1, 2]] and d.fired == 1


def test_debounce_max_delay_bounds_a_continuous_storm() -> None:
    clock = ManualClock()
    fired: list[list[int]] = []
    d = Debouncer(fired.append, quiet=0.1, max_delay=1.0, clock=clock)
    for i in range(30):  # an event every 50 ms: never quiet
        d.trigger(i)
        clock.advance(0.05)
    assert len(fired) == 1 and fired[0] == list(range(20))  # fired at t=1.0 with everything so far
    clock.advance(0.2)
    assert len(fired) == 2 and fired[1] == list(range(20, 30))


def test_debounce_flush_and_close() -> None:
    clock = ManualClock()
    fired: list[list[str]] = []
    d = Debouncer(fired.append, clock=clock)
    d.trigger("a")
    d.flush()
    assert fired == [["a"]]
    d.trigger("b")
    d.close()
    clock.advance(10)
    assert fired == [["a"]] and d.pending == 0
    with pytest.raises(ValueError):
        Debouncer(fired.append, quiet=2, max_delay=1, clock=clock)


def test_token_bucket_limits_new_streams() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0, 0, 0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # queued behind the previous reservation
    clock.advance(1.0)
    assert bucket.reserve() == 0


async def test_fake_stream_sotw_push_on_cache_change() -> None:
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", Snapshot.of([cluster("c1")]))
    pq = PushQueue()
    stream: FakeStream[object] = FakeStream()
    core = SotwStream(cache)
    task = asyncio.create_task(pq.serve(core, stream, stream.send))
    stream.put(req(CLUSTER, with_node=node()))
    r1 = await stream.get()
    assert names_of(r1) == ["c1"]  # type: ignore[arg-type]
    stream.put(req(CLUSTER, nonce=r1.nonce, version=r1.version_info))  # type: ignore[attr-defined]
    cache.set_snapshot("n1", Snapshot.of([cluster("c1"), cluster("c2")]))
    r2 = await stream.get()
    assert sorted(names_of(r2)) == ["c1", "c2"]  # type: ignore[arg-type]
    stream.end()
    await task
    assert core.closed and stream.drain() == []


async def test_pushes_merge_per_connection_while_throttled() -> None:
    cache = LinearCache(ENDPOINT, [cla("e1")])
    pq = PushQueue(max_in_flight=1)
    stream: FakeStream[object] = FakeStream()
    core = DeltaStream(cache)
    task = asyncio.create_task(pq.serve(core, stream, stream.send))
    stream.put(dreq(ENDPOINT, ["*"], with_node=node()))
    await stream.get()
    async with pq._slots:  # hold the only push slot: changes pile up inside the stream
        for port in range(81, 91):
            cache.update([cla("e1", port), cla(f"x{port}")])
        await asyncio.sleep(0.01)
        assert stream.drain() == []
    r = await stream.get()
    assert sorted(x.name for x in r.resources) == ["e1", *sorted(f"x{p}" for p in range(81, 91))]  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert stream.drain() == []  # one merged push, not ten
    stream.end()
    await task


async def test_send_error_ends_stream_and_closes_core() -> None:
    cache = LinearCache(ENDPOINT, [cla("e1")])
    core = DeltaStream(cache)
    stream: FakeStream[object] = FakeStream()
    sent: list[object] = []

    async def send(resp: object) -> None:
        if sent:
            raise ConnectionResetError("peer went away")
        sent.append(resp)

    task = asyncio.create_task(PushQueue().serve(core, stream, send))
    stream.put(dreq(ENDPOINT, ["*"], with_node=node()))
    await asyncio.sleep(0.01)
    cache.update([cla("e1", 99)])
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, 2)
    assert core.closed and cache.watch_count == 0


async def test_thousand_delta_clients_converge_after_one_endpoint_change() -> None:
    loop = asyncio.get_running_loop()
    cache = LinearCache(ENDPOINT, [cla(f"e{i}", 1000 + i) for i in range(500)])
    pq = PushQueue(max_in_flight=100, streams_per_second=1e6, stream_burst=100000)
    streams = []
    tasks = []
    for i in range(1000):
        fs: FakeStream[object] = FakeStream()
        tasks.append(asyncio.create_task(pq.serve(DeltaStream(cache), fs, fs.send)))
        fs.put(dreq(ENDPOINT, ["*"], with_node=node(f"n{i}")))
        streams.append(fs)
    for fs in streams:
        await fs.get()
    start = loop.time()
    cache.update([cla("e5", 5)])
    for fs in streams:
        r = await fs.get()
        assert [x.name for x in r.resources] == ["e5"]  # type: ignore[attr-defined]
    elapsed = loop.time() - start
    print(f"converged in {elapsed:.3f}s")
    assert elapsed < 2.0, elapsed
    for fs in streams:
        fs.end()
    await asyncio.gather(*tasks)
