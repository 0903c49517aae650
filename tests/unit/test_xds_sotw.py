"""SotW rules 1-11 (docs/xds.md), one test per rule, plus ordering/NACK/warming behaviour."""

from __future__ import annotations

import pytest

from microxds.cache import Snapshot, SnapshotCache
from microxds.errors import ProtocolError
from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from microxds.server.sotw import SotwStream
from microxds.server.status import StatusRegistry
from tests.unit.test_xds_fixtures import cla, cluster, listener, names_of, node, req, route


def make(*resources, group: str = "n1", **kw):  # type: ignore[no-untyped-def]
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot(group, Snapshot.of(resources))
    return cache, SotwStream(cache, **kw)


def first(stream: SotwStream, type_url: str, names=(), n=None):  # type: ignore[no-untyped-def]
    return stream.handle(req(type_url, names, with_node=n or node()))


def test_rule1_node_cached_from_first_request() -> None:
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", Snapshot.of([cluster("c1")]))
    cache.set_snapshot("other", Snapshot.of([cluster("x")]))
    s = SotwStream(cache)
    (r,) = s.handle(req(CLUSTER, with_node=node("n1")))
    assert names_of(r) == ["c1"]
    # Later requests carry no node; the stream keeps serving group "n1".
    (r2,) = s.handle(req(LISTENER, []))
    assert r2.type_url == LISTENER
    assert s.node is not None and s.node.id == "n1"
    cache.set_snapshot("n1", Snapshot.of([cluster("c1"), cluster("c2")]))
    (r3,) = s.flush()
    assert sorted(names_of(r3)) == ["c1", "c2"]


def test_rule2_version_per_type_identical_across_replicas_nonce_per_stream() -> None:
    res = [cluster("c1"), listener("l1")]
    _, a = make(*res)
    _, b = make(*res)  # another replica with the same config
    (ca,) = first(a, CLUSTER)
    (la,) = a.handle(req(LISTENER))
    (cb,) = first(b, CLUSTER)
    assert ca.version_info == cb.version_info and ca.version_info
    assert la.version_info != ca.version_info  # per type
    assert int(la.nonce) > int(ca.nonce)  # nonces increase on one stream
    assert cb.nonce == ca.nonce  # ...and do not depend on other streams


def test_rule3_ack_and_nack_detected_by_error_detail() -> None:
    reg = StatusRegistry()
    cache, s = make(cla("e1"), registry=reg)
    (r,) = first(s, ENDPOINT, ["e1"])
    # Envoy's RDS/EDS NACK can echo the *new* version: only error_detail decides (envoy PR #14841).
    assert s.handle(req(ENDPOINT, ["e1"], nonce=r.nonce, version=r.version_info, nack="bad endpoint")) == []
    ts = s.status.types[ENDPOINT]
    assert ts.nack is not None and ts.nack.message == "bad endpoint" and ts.nack.version == r.version_info
    assert ts.nacked and ts.acked_version == ""
    # An ACK echoing an old version is still an ACK.
    cache.set_snapshot("n1", Snapshot.of([cla("e1", 81)]))
    (r2,) = s.flush()
    s.handle(req(ENDPOINT, ["e1"], nonce=r2.nonce, version="whatever"))
    assert not s.status.types[ENDPOINT].nacked
    assert s.status.types[ENDPOINT].acked_nonce == r2.nonce


def test_rule4_stale_nonce_ignored() -> None:
    cache, s = make(cluster("c1"), cla("e1"), cla("e2"))
    (r1,) = first(s, ENDPOINT, ["e1"])
    cache.set_snapshot("n1", Snapshot.of([cluster("c1"), cla("e1", 81), cla("e2")]))
    (r2,) = s.flush()
    # A request answering r1 (now stale), even one adding a name, is ignored.
    assert s.handle(req(ENDPOINT, ["e1", "e2"], nonce=r1.nonce, version=r1.version_info)) == []
    assert s.status.types[ENDPOINT].stale_count == 1
    (r3,) = s.handle(req(ENDPOINT, ["e1", "e2"], nonce=r2.nonce, version=r2.version_info))
    assert names_of(r3) == ["e2"]


def test_rule5_send_only_on_change_never_on_ack() -> None:
    cache, s = make(cluster("c1"))
    (r,) = first(s, CLUSTER)
    for _ in range(3):
        assert s.handle(req(CLUSTER, nonce=r.nonce, version=r.version_info)) == []
    cache.set_snapshot("n1", Snapshot.of([cluster("c1")]))  # same content: no change
    assert s.flush() == []
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", service="x")]))
    (r2,) = s.flush()
    assert s.handle(req(CLUSTER, nonce=r2.nonce, version=r2.version_info)) == []


def test_rule6_newly_requested_names_sent_even_if_unchanged() -> None:
    _, s = make(cla("e1"), cla("e2"))
    (r1,) = first(s, ENDPOINT, ["e1"])
    (r2,) = s.handle(req(ENDPOINT, ["e1", "e2"], nonce=r1.nonce, version=r1.version_info))
    assert names_of(r2) == ["e2"]
    # Drop e2 then ask again: e2 is "new" again and must be re-sent (go-control-plane #583).
    assert s.handle(req(ENDPOINT, ["e1"], nonce=r2.nonce, version=r2.version_info)) == []
    (r3,) = s.handle(req(ENDPOINT, ["e1", "e2"], nonce=r2.nonce, version=r2.version_info))
    assert names_of(r3) == ["e2"]


def test_rule7_responses_never_repeat_a_name() -> None:
    _, s = make(cluster("c1"), cluster("c2"))
    (r,) = first(s, CLUSTER, ["*", "c1"])
    assert sorted(names_of(r)) == ["c1", "c2"]
    _, s2 = make(cla("e1"))
    (r2,) = first(s2, ENDPOINT, ["e1", "e1"])
    assert names_of(r2) == ["e1"]


def test_rule8_lds_and_cds_are_full_state() -> None:
    cache, s = make(cluster("c1"), cluster("c2"))
    (r,) = first(s, CLUSTER)
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", service="new"), cluster("c2")]))
    (r2,) = s.flush()
    assert sorted(names_of(r2)) == ["c1", "c2"]  # unchanged c2 is included
    cache.set_snapshot("n1", Snapshot.of([cluster("c2")]))
    (r3,) = s.flush()
    assert names_of(r3) == ["c2"]  # c1 deleted by omission
    cache.set_snapshot("n1", Snapshot())
    (r4,) = s.flush()
    assert names_of(r4) == []  # empty response: delete all
    assert len({r.version_info for r in (r, r2, r3, r4)}) == 4


def test_rule9_other_types_carry_only_changes() -> None:
    cache, s = make(cla("e1"), cla("e2"), route("r1", "c1"))
    (r,) = first(s, ENDPOINT, ["e1", "e2"])
    assert sorted(names_of(r)) == ["e1", "e2"]
    cache.set_snapshot("n1", Snapshot.of([cla("e1", 99), cla("e2"), route("r1", "c1")]))
    (r2,) = s.flush()
    assert names_of(r2) == ["e1"]
    assert r2.version_info != r.version_info
    # Deletion has no signal outside LDS/CDS: nothing is sent.
    cache.set_snapshot("n1", Snapshot.of([cla("e1", 99), route("r1", "c1")]))
    assert s.flush() == []


def test_rule10_missing_names_remembered_and_pushed_when_they_appear() -> None:
    cache, s = make(cla("e1"))
    assert first(s, ENDPOINT, ["late"]) == []  # SotW cannot say "does not exist"
    cache.set_snapshot("n1", Snapshot.of([cla("e1"), cla("late")]))
    (r,) = s.flush()
    assert names_of(r) == ["late"]
    # Named LDS (gRPC) for a missing listener: answered (empty full state), then pushed when it appears.
    cache2, g = make(cluster("c"))
    (lr,) = first(g, LISTENER, ["myservice"])
    assert names_of(lr) == []
    cache2.set_snapshot("n1", Snapshot.of([cluster("c"), listener("myservice")]))
    (lr2,) = g.flush()
    assert names_of(lr2) == ["myservice"]


def test_rule11_wildcard_legacy_explicit_and_named_lds_cds() -> None:
    res = [listener("l1"), listener("l2"), cluster("c1")]
    _, s = make(*res)
    (r,) = first(s, LISTENER)  # legacy wildcard: empty list on a stream that never named anything
    assert sorted(names_of(r)) == ["l1", "l2"]
    (r2,) = s.handle(req(LISTENER, ["l1"], nonce=r.nonce, version=r.version_info))
    assert names_of(r2) == ["l1"]  # named now
    (r3,) = s.handle(req(LISTENER, [], nonce=r2.nonce, version=r2.version_info))
    assert names_of(r3) == []  # after naming, empty = unsubscribe all
    (r4,) = s.handle(req(LISTENER, ["*"], nonce=r3.nonce, version=r3.version_info))
    assert sorted(names_of(r4)) == ["l1", "l2"]  # explicit wildcard
    # gRPC: named LDS and CDS, answered immediately without waiting for other names (no ADS hold).
    _, g = make(*res)
    (gl,) = first(g, LISTENER, ["l2"])
    assert names_of(gl) == ["l2"]
    (gc,) = g.handle(req(CLUSTER, ["c1"]))
    assert names_of(gc) == ["c1"]
    # Legacy wildcard is LDS/CDS only: an empty RDS request subscribes to nothing.
    _, e = make(route("r1"))
    assert first(e, ROUTE) == []


def test_nack_not_resent_until_content_changes() -> None:
    cache, s = make(cluster("c1"))
    (r,) = first(s, CLUSTER)
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", lb=1)]))
    (bad,) = s.flush()
    assert s.handle(req(CLUSTER, nonce=bad.nonce, version=r.version_info, nack="LB policy is not supported")) == []
    assert s.flush() == []
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", lb=1)]))  # same rejected content again
    assert s.flush() == []
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", lb=0)]))
    (fixed,) = s.flush()
    assert fixed.version_info == r.version_info  # back to the old content: same digest
    assert s.status.types[CLUSTER].nack is not None  # the last NACK is kept for status


def test_push_order_cds_eds_lds_rds() -> None:
    cache, s = make(cluster("c1"), cla("c1"), listener("l1", "r1"), route("r1", "c1"))
    first(s, CLUSTER)
    s.handle(req(LISTENER))
    s.handle(req(ROUTE, ["r1"]))
    s.handle(req(ENDPOINT, ["c1"]))
    cache.set_snapshot(
        "n1",
        Snapshot.of(
            [route("r1", "c1", "c2"), listener("l1", "r1"), cla("c1", 2), cla("c2"), cluster("c1"), cluster("c2")]
        ),
    )
    out = s.flush()
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT, ROUTE]  # the listener did not change


def test_cds_change_pushes_unchanged_eds_for_warming() -> None:
    cache, s = make(cluster("c1", service="s1"), cla("s1"))
    first(s, CLUSTER)
    (e,) = s.handle(req(ENDPOINT, ["s1"]))
    s.handle(req(ENDPOINT, ["s1"], nonce=e.nonce, version=e.version_info))
    cache.set_snapshot("n1", Snapshot.of([cluster("c1", service="s1", lb=2), cla("s1")]))
    out = s.flush()
    assert [r.type_url for r in out] == [CLUSTER, ENDPOINT]  # Kuma PR #331: EDS even though unchanged
    assert names_of(out[1]) == ["s1"]
    assert out[1].version_info == e.version_info


def test_protocol_errors() -> None:
    _, s = make(cluster("c1"))
    with pytest.raises(ProtocolError):
        s.handle(req(""))
    _, t = make(cluster("c1"), type_url=CLUSTER)
    (r,) = t.handle(req("", with_node=node()))  # per-type stream: type_url may be omitted
    assert r.type_url == CLUSTER
    with pytest.raises(ProtocolError):
        t.handle(req(LISTENER))


def test_close_unwatches_and_unregisters() -> None:
    reg = StatusRegistry()
    cache, s = make(cluster("c1"), registry=reg)
    first(s, CLUSTER)
    assert len(reg) == 1 and cache.watched_groups() == {"n1": 1}
    s.close()
    assert len(reg) == 0 and cache.watched_groups() == {}
