"""Caches: snapshot diffs and groups, default snapshot, consistency problems, linear cache cost, mux routing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from google.protobuf import struct_pb2

from microxds.cache import LinearCache, MetadataHash, MuxCache, Snapshot, SnapshotCache, node_cluster_hash
from microxds.cache.versions import SetDigest, digest_of
from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from microxds.server.delta import DeltaStream
from tests.unit.test_xds_fixtures import cla, cluster, dreq, listener, node, route


def test_snapshot_diff_reports_added_changed_removed() -> None:
    old = Snapshot.of([cluster("a"), cluster("b"), cla("e")])
    new = Snapshot.of([cluster("a"), cluster("b", service="x"), cluster("c")])
    assert new.diff(old) == {CLUSTER: frozenset({"b", "c"}), ENDPOINT: frozenset({"e"})}
    assert new.diff(new) == {}


def test_snapshot_rejects_duplicates_and_mismatched_keys() -> None:
    with pytest.raises(ValueError):
        Snapshot.of([cluster("a"), cluster("a", service="x")])
    with pytest.raises(ValueError):
        Snapshot({CLUSTER: {"wrong": cluster("a")}})


def test_watchers_get_changed_names_per_group_and_default() -> None:
    cache = SnapshotCache(node_cluster_hash, default=Snapshot.of([cluster("d")]), check_consistency=False)
    seen: list[dict[str, frozenset[str]]] = []
    w = cache.watch(node("x", "groupA"), lambda ch: seen.append(dict(ch)))
    assert list(w.resources(CLUSTER)) == ["d"]  # default snapshot
    cache.set_snapshot("groupB", Snapshot.of([cluster("other")]))
    assert seen == []
    cache.set_snapshot("groupA", Snapshot.of([cluster("d"), cluster("a")]))
    assert seen == [{CLUSTER: frozenset({"a"})}]
    cache.set_default(Snapshot.of([cluster("z")]))  # groupA has its own snapshot: not notified
    assert len(seen) == 1
    cache.clear_snapshot("groupA")
    assert seen[-1] == {CLUSTER: frozenset({"a", "d", "z"})}
    w.close()
    assert cache.watched_groups() == {}


def test_metadata_hash() -> None:
    n = node()
    n.metadata.update({"NAMESPACE": "ns1", "CLUSTER_ID": "k1"})
    n.metadata.fields["N"].CopyFrom(struct_pb2.Value(number_value=2))
    assert MetadataHash("NAMESPACE", "CLUSTER_ID", "missing", "N")(n) == "ns1/k1//2.0"
    with pytest.raises(ValueError):
        MetadataHash()


def test_consistency_problems_follow_the_reference_chain() -> None:
    snap = Snapshot.of(
        [
            listener("l1", "r1"),
            listener("l2", "missing-route"),
            route("r1", "c1", "missing-cluster"),
            cluster("c1", service="s1"),
            cluster("c2"),
            cla("s1"),
        ]
    )
    problems = {(p.source_type, p.source, p.missing_type, p.missing) for p in snap.consistency_problems()}
    assert problems == {
        (LISTENER, "l2", ROUTE, "missing-route"),
        (ROUTE, "r1", CLUSTER, "missing-cluster"),
        (CLUSTER, "c2", ENDPOINT, "c2"),
    }
    assert "missing Cluster 'missing-cluster'" in " ".join(str(p) for p in snap.consistency_problems())


def test_consistency_warns_but_never_rejects(caplog: pytest.LogCaptureFixture) -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", Snapshot.of([cluster("c2")]))
    assert "inconsistent" in caplog.text
    assert list(cache.snapshot_for("n1").resources(CLUSTER)) == ["c2"]


def test_consistency_tcp_proxy_and_inline_routes() -> None:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    lst = listener_pb2.Listener(name="tcp")
    chain = lst.filter_chains.add()
    chain.filters.add(name="tcp").typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="tc"))
    hcm = http_connection_manager_pb2.HttpConnectionManager(stat_prefix="h")
    vh = hcm.route_config.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.weighted_clusters.clusters.add(name="w1").weight.value = 1
    chain.filters.add(name="hcm").typed_config.Pack(hcm)
    snap = Snapshot.of([Resource.of(lst)])
    assert {p.missing for p in snap.consistency_problems()} == {"tc", "w1"}


def test_set_digest_is_order_independent_and_incremental() -> None:
    a = SetDigest()
    a.add("x", "1")
    a.add("y", "2")
    b = SetDigest()
    b.add("y", "2")
    b.add("z", "3")
    b.add("x", "1")
    b.remove("z", "3")
    assert a.hexdigest() == b.hexdigest() == digest_of({"x": "1", "y": "2"})


class CountingMapping(Mapping[str, Resource]):
    """Counts full scans so a test can prove the push path never walks every resource."""

    def __init__(self, data: Mapping[str, Resource]) -> None:
        self.data = data
        self.scans = 0

    def __getitem__(self, key: str) -> Resource:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        self.scans += 1
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_linear_cache_cost_is_proportional_to_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    total, clients = 5000, 50
    cache = LinearCache(ENDPOINT, [cla(f"e{i}", 1000 + i % 50000) for i in range(total)])
    streams = [DeltaStream(cache) for _ in range(clients)]
    for s in streams:
        (r,) = s.handle(dreq(ENDPOINT, ["*"], with_node=node()))
        assert len(r.resources) == total
    counting = CountingMapping(cache.view)
    cache.view = counting
    calls = {"to_any": 0, "notify": 0}
    real_to_any = Resource.to_any

    def to_any(self: Resource):  # type: ignore[no-untyped-def]
        calls["to_any"] += 1
        return real_to_any(self)

    monkeypatch.setattr(Resource, "to_any", to_any)
    for s in streams:
        s.on_dirty = lambda: calls.__setitem__("notify", calls["notify"] + 1)
    changes = cache.update([cla("e7", 9)], removals=["e8", "not-there"])
    assert changes == {ENDPOINT: frozenset({"e7", "e8"})}
    assert calls["notify"] == clients  # one notification per watcher, not per resource
    for s in streams:
        (r,) = s.flush()
        assert [x.name for x in r.resources] == ["e7"] and list(r.removed_resources) == ["e8"]
    assert calls["to_any"] == 1  # the changed resource is encoded once, its bytes shared by every client
    assert counting.scans == 0  # nobody walked the 5000 resources
    assert cache.update([cla("e7", 9)]) == {}  # same content: no change, no notification
    assert calls["notify"] == clients


def test_mux_routes_types_to_their_caches() -> None:
    snap = SnapshotCache(check_consistency=False)
    snap.set_snapshot("n1", Snapshot.of([cluster("c1"), cla("shadowed")]))
    eds = LinearCache(ENDPOINT, [cla("e1")])
    mux = MuxCache(snap, {ENDPOINT: eds})
    seen: list[dict[str, frozenset[str]]] = []
    w = mux.watch(node(), lambda ch: seen.append(dict(ch)))
    assert list(w.resources(ENDPOINT)) == ["e1"] and list(w.resources(CLUSTER)) == ["c1"]
    snap.set_snapshot("n1", Snapshot.of([cluster("c2"), cla("shadowed2")]))
    eds.update([cla("e2")])
    assert seen == [{CLUSTER: frozenset({"c1", "c2"})}, {ENDPOINT: frozenset({"e2"})}]
    w.close()
    assert eds.watch_count == 0 and snap.watched_groups() == {}
