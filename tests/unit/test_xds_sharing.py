"""Structural sharing of subscription state and pre-encoded responses (memory per idle client)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from microxds.cache import LinearCache
from microxds.cache.versions import digest_of
from microxds.resources import ENDPOINT
from microxds.server import pushqueue
from microxds.server.delta import DeltaStream
from microxds.server.subscription import SentVersions, Subscription
from microxds.server.wire import ResponseCodec
from tests.unit.test_xds_fixtures import cla, dreq, node


def test_clients_with_the_same_names_share_one_set_and_one_version_map() -> None:
    cache = LinearCache(ENDPOINT, [cla(f"e{i}", 1000 + i) for i in range(300)])
    names = [f"e{i}" for i in range(300)]
    streams = [DeltaStream(cache) for _ in range(3)]
    for s in streams:
        s.handle(dreq(ENDPOINT, names, with_node=node()))
    subs = [s._subs[ENDPOINT] for s in streams]
    assert subs[0].names is subs[1].names is subs[2].names
    assert subs[0].sent._base is subs[1].sent._base is subs[2].sent._base
    assert not subs[0].sent._over and len(subs[0].sent) == 300
    cache.update([cla("e7", 9)])
    for s in streams:
        (r,) = s.flush()
        assert [x.name for x in r.resources] == ["e7"]
    assert all(sub.sent["e7"] == cache.view["e7"].version and len(sub.sent._over) == 1 for sub in subs)


def test_sent_versions_overlay_matches_a_plain_dict() -> None:
    sent, plain = SentVersions(), {}
    for i in range(100):
        sent.record(f"n{i}", "v1")
        plain[f"n{i}"] = "v1"
    sent.settle()
    for i in range(0, 100, 3):
        sent.record(f"n{i}", "v2")
        plain[f"n{i}"] = "v2"
    for i in range(1, 100, 7):
        assert sent.forget(f"n{i}")
        del plain[f"n{i}"]
    assert not sent.forget("n1") and not sent.forget("never")
    sent.record("n0", "v1")  # back to the base's version: the overlay entry goes away
    plain["n0"] = "v1"
    assert dict(sent) == plain and len(sent) == len(plain)
    assert sent.digest() == digest_of(plain)
    sent.settle()
    assert dict(sent) == plain and sent.digest() == digest_of(plain)


def test_delta_unsubscribe_and_resubscribe_keep_names_interned() -> None:
    a, b = Subscription(), Subscription()
    a.apply_delta(["x", "y"], [], first=True)
    b.apply_delta(["y"], [], first=True)
    b.apply_delta(["x"], [], first=False)
    assert a.names is b.names
    change = a.apply_delta([], ["x", "zz"], first=False)
    assert change.removed == {"x"} and a.names == {"y"}


def test_wire_response_is_a_valid_message() -> None:
    cache = LinearCache(ENDPOINT, [cla("e1"), cla("e2", 81)])
    s = DeltaStream(cache)
    (r,) = s.handle(dreq(ENDPOINT, ["e1", "e2"], with_node=node()))
    data = ResponseCodec(discovery_pb2.DeltaDiscoveryResponse).encode(r)
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
    assert sorted(x.name for x in parsed.resources) == ["e1", "e2"]
    assert parsed.nonce == r.nonce and parsed.type_url == ENDPOINT and parsed.system_version_info
    assert all(x.resource.value == cache.view[x.name].value for x in parsed.resources)


async def test_freed_memory_is_released_once_after_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(pushqueue, "_malloc_trim", lambda: lambda: trims.append(1))
    queue = pushqueue.PushQueue()
    task = asyncio.create_task(pushqueue.release_memory_after_bursts(queue, interval=0.01))
    await asyncio.sleep(0.05)
    assert trims == []  # idle: never trims
    queue.responses += 5
    await asyncio.sleep(0.06)
    assert trims == [1]  # one trim after the burst, not one per tick
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
