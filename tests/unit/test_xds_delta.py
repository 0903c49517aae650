"""Delta rules 1-7 (docs/xds.md), one test per rule, plus aliases and NACK status."""

from __future__ import annotations

from microxds.cache import LinearCache, Snapshot, SnapshotCache
from microxds.resources import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER
from microxds.server.delta import DeltaStream
from tests.unit.test_xds_fixtures import cla, cluster, dreq, listener, node


def make(*resources, **kw):  # type: ignore[no-untyped-def]
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", Snapshot.of(resources))
    return cache, DeltaStream(cache, **kw)


def sent(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.name: r.version for r in resp.resources}


def test_rule1_resources_carry_their_own_versions() -> None:
    c1, c2 = cluster("c1"), cluster("c2")
    _, s = make(c1, c2)
    (r,) = s.handle(dreq(CLUSTER, ["*"], with_node=node()))
    assert sent(r) == {"c1": c1.version, "c2": c2.version}
    assert all(x.resource.value for x in r.resources)
    assert r.system_version_info  # debugging digest only


def test_rule2_nonce_always_and_subscriptions_honoured_with_stale_nonce() -> None:
    cache, s = make(cla("e1"), cla("e2"))
    (r1,) = s.handle(dreq(ENDPOINT, ["e1"], with_node=node()))
    cache.set_snapshot("n1", Snapshot.of([cla("e1", 81), cla("e2")]))
    (r2,) = s.flush()
    assert r1.nonce and r2.nonce and r1.nonce != r2.nonce
    # ACK of r1 arrives after r2 was sent, together with a new subscription: honour it anyway.
    (r3,) = s.handle(dreq(ENDPOINT, ["e2"], nonce=r1.nonce))
    assert sent(r3) == {"e2": cla("e2").version}
    assert s.status.types[ENDPOINT].stale_count == 1


def test_rule3_every_subscribed_name_answered_even_if_client_has_it() -> None:
    _, s = make(cla("e1"))
    (r1,) = s.handle(dreq(ENDPOINT, ["e1"], with_node=node()))
    (r2,) = s.handle(dreq(ENDPOINT, ["e1"], nonce=r1.nonce))
    assert sent(r2) == sent(r1)


def test_rule4_unsubscribe_unknown_noop_and_wildcard_drop_resends() -> None:
    _, s = make(cluster("c1"), cluster("c2"))
    (r1,) = s.handle(dreq(CLUSTER, ["*", "c1"], with_node=node()))
    assert s.handle(dreq(CLUSTER, [], ["nope"], nonce=r1.nonce)) == []
    (r2,) = s.handle(dreq(CLUSTER, [], ["c1"]))
    assert sent(r2) == {"c1": cluster("c1").version}  # still covered by "*": reply with it
    _, e = make(cla("e1"))
    e.handle(dreq(ENDPOINT, ["e1"], with_node=node()))
    assert e.handle(dreq(ENDPOINT, [], ["e1"])) == []  # explicit only: dropped quietly


def test_rule5_removals_for_deletions_only() -> None:
    cache, s = make(cla("e1"), cla("e2"), cluster("x"))
    s.handle(dreq(ENDPOINT, ["e1", "ghost"], with_node=node()))
    cache.set_snapshot("n1", Snapshot.of([cla("e2"), cluster("x")]))
    (r,) = s.flush()
    assert list(r.removed_resources) == ["e1"] and not r.resources
    cache.set_snapshot("n1", Snapshot.of([cla("e2"), cla("ghost"), cluster("x")]))
    (r2,) = s.flush()
    assert sent(r2) == {"ghost": cla("ghost").version}
    # A name that never existed gets no removal (go-control-plane PR #488).
    assert s.handle(dreq(ENDPOINT, ["never"])) == []
    cache.set_snapshot("n1", Snapshot.of([cla("e2"), cla("ghost")]))
    assert s.flush() == []  # unsubscribed type changes are not pushed
    # Types that must never be removed (Istio neverRemoveDelta for ECDS).
    from envoy.config.core.v3 import extension_pb2

    from microxds.resources import Resource

    ext = Resource.of(extension_pb2.TypedExtensionConfig(name="f1"))
    cache2 = SnapshotCache(check_consistency=False)
    cache2.set_snapshot("n1", Snapshot.of([ext]))
    d = DeltaStream(cache2, never_remove_types=[EXTENSION_CONFIG])
    d.handle(dreq(EXTENSION_CONFIG, ["f1"], with_node=node()))
    cache2.set_snapshot("n1", Snapshot())
    assert d.flush() == []


def test_rule6_initial_resource_versions_resume() -> None:
    l1, l2, l3 = listener("l1"), listener("l2"), listener("l3")
    _, s = make(l1, listener("l2", "other"), l3)
    initial = {"l1": l1.version, "l2": l2.version, "gone": "v0"}
    (r,) = s.handle(dreq(LISTENER, ["*"], initial=initial, with_node=node()))
    assert set(sent(r)) == {"l2", "l3"}  # l1 unchanged: skipped; l2 changed; l3 new
    assert list(r.removed_resources) == ["gone"]  # Istio #41494
    # Explicit names with a resume: unchanged declared name skipped, but a response is still sent.
    _, e = make(cla("e1"))
    (r2,) = e.handle(dreq(ENDPOINT, ["e1"], initial={"e1": cla("e1").version}, with_node=node()))
    assert not r2.resources and not r2.removed_resources and r2.nonce


def test_rule7_wildcard_forms() -> None:
    _, s = make(cluster("c1"))
    (r,) = s.handle(dreq(CLUSTER, with_node=node()))  # legacy: empty first request
    assert set(sent(r)) == {"c1"}
    _, e = make(cluster("c1"))
    (r2,) = e.handle(dreq(CLUSTER, ["*"], ["*"], with_node=node()))  # Istio: subscribe to nothing
    assert not r2.resources
    (r3,) = e.handle(dreq(CLUSTER, ["*"]))
    assert set(sent(r3)) == {"c1"}
    assert e.handle(dreq(CLUSTER, [], ["*"])) == []  # wildcard dropped: client forgets by itself


def test_aliases_resolve_to_canonical_resource() -> None:
    workload = cla("uid-1", aliases=("net/10.0.0.1",))
    cache = LinearCache(ENDPOINT, [workload])
    s = DeltaStream(cache)
    (r,) = s.handle(dreq(ENDPOINT, ["net/10.0.0.1"], with_node=node()))
    assert [(x.name, list(x.aliases)) for x in r.resources] == [("uid-1", ["net/10.0.0.1"])]
    cache.update([cla("uid-1", 90, aliases=("net/10.0.0.1",))])
    (r2,) = s.flush()
    assert [x.name for x in r2.resources] == ["uid-1"]
    cache.update(removals=["uid-1"])
    (r3,) = s.flush()
    assert list(r3.removed_resources) == ["uid-1"]


def test_nack_recorded_and_not_resent() -> None:
    cache, s = make(cluster("c1"))
    (r,) = s.handle(dreq(CLUSTER, ["*"], with_node=node()))
    assert s.handle(dreq(CLUSTER, nonce=r.nonce, nack="bad cluster")) == []
    ts = s.status.types[CLUSTER]
    assert ts.nacked and ts.nack is not None and ts.nack.message == "bad cluster"
    cache.set_snapshot("n1", Snapshot.of([cluster("c1")]))
    assert s.flush() == []
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", lb=1)]))
    (r2,) = s.flush()
    s.handle(dreq(CLUSTER, nonce=r2.nonce))
    assert not s.status.types[CLUSTER].nacked and s.status.types[CLUSTER].ack_count == 1
