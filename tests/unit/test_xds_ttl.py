"""Resource TTL and heartbeats (Delta and SotW), TTL in config, and SotW resume by `version_info` on a reconnect."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from microxds.cache import Snapshot, SnapshotCache
from microxds.client.state import DeltaSession, SotwTypeState, TypeSpec
from microxds.errors import ConfigError
from microxds.resources import CLUSTER, Resource
from microxds.server.delta import DeltaStream
from microxds.server.heartbeat import Heartbeats, interval_for
from microxds.server.sotw import SotwStream
from microxds.sources.yamlconfig import parse_texts
from tests.unit.test_xds_fixtures import cluster, dreq, node
from tests.unit.test_xds_fixtures import req as sreq

WRAPPED = """
resources:
  - "@type": type.googleapis.com/envoy.service.discovery.v3.Resource
    ttl: 2.5s
    resource:
      "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: short-lived
      connect_timeout: 1s
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: forever
    connect_timeout: 1s
"""


def ttl_cluster(name: str, ttl: float) -> Resource:
    return Resource.of(cluster_pb2.Cluster.FromString(cluster(name).value), ttl=ttl)


def make(stream_cls, *resources):  # type: ignore[no-untyped-def]
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", Snapshot.of(resources))
    hb = Heartbeats()
    s = stream_cls(cache)
    s.heartbeats = hb
    dirty: list[int] = []
    s.on_dirty = lambda: dirty.append(1)
    return cache, s, hb, dirty


def test_config_ttl_from_a_resource_wrapper() -> None:
    snap = parse_texts([("c.yaml", WRAPPED)])
    assert snap.get(CLUSTER, "short-lived").ttl == 2.5  # type: ignore[union-attr]
    assert snap.get(CLUSTER, "forever").ttl is None  # type: ignore[union-attr]
    plain = parse_texts([("c.yaml", WRAPPED.replace("ttl: 2.5s", "ttl: 4s"))])
    # A different TTL is a different version (clients learn the new lifetime); the body alone is not.
    assert plain.get(CLUSTER, "short-lived").version != snap.get(CLUSTER, "short-lived").version  # type: ignore[union-attr]


def test_config_ttl_errors_point_at_the_resource() -> None:
    bad = WRAPPED.replace("ttl: 2.5s", "ttl: -1s")
    try:
        parse_texts([("c.yaml", bad)])
    except ConfigError as exc:
        assert "c.yaml:3: ttl must be between" in str(exc)
    else:
        raise AssertionError("negative TTL accepted")


def test_delta_sends_ttl_and_heartbeats_only_current_ttl_resources() -> None:
    short, forever = ttl_cluster("short", 3.0), cluster("forever")
    _, s, hb, dirty = make(DeltaStream, short, forever)
    (r,) = s.handle(dreq(CLUSTER, ["*"], with_node=node()))
    by_name = {x.name: x for x in r.resources}
    assert by_name["short"].ttl.seconds == 3 and not by_name["forever"].HasField("ttl")
    assert len(hb) == 1
    hb.tick()
    assert dirty == [1]
    (beat,) = s.flush()
    assert [(x.name, x.version, x.HasField("resource"), x.ttl.seconds) for x in beat.resources] == [
        ("short", short.version, False, 3)
    ]
    assert beat.nonce and s.status.types[CLUSTER].sent_nonce == beat.nonce  # the client ACKs it like any response
    assert s.status.types[CLUSTER].sent_count == 1  # a heartbeat is not a push


def test_sotw_wraps_ttl_resources_and_heartbeats_with_the_full_state() -> None:
    short, forever = ttl_cluster("short", 3.0), cluster("forever")
    _, s, hb, _ = make(SotwStream, short, forever)
    (r,) = s.handle(sreq(CLUSTER, [], with_node=node()))
    kinds = {a.type_url.rsplit(".", 1)[-1] for a in r.resources}
    assert kinds == {"Resource", "Cluster"}
    hb.tick()
    (beat,) = s.flush()
    assert beat.version_info == r.version_info and beat.nonce != r.nonce
    assert sorted(a.SerializeToString() for a in beat.resources) == sorted(a.SerializeToString() for a in r.resources)
    assert s.status.types[CLUSTER].sent_count == 1  # counted as a heartbeat, not a push


def test_sotw_client_keeps_state_on_a_bodyless_heartbeat() -> None:
    """Other servers (go-control-plane) heartbeat SotW with body-less wrappers: not a new, empty full state."""
    client = SotwTypeState(CLUSTER)

    class Keep:
        def apply(self, type_url, resources, removed):  # type: ignore[no-untyped-def]
            self.removed = list(removed)
            return {}

    handler = Keep()
    first = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CLUSTER, nonce="1")
    first.resources.add().CopyFrom(cluster("a").to_any())
    client.on_response(first, handler)
    beat = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CLUSTER, nonce="2")
    wrapper = discovery_pb2.Resource(name="a", version="v1")
    wrapper.ttl.FromSeconds(3)
    beat.resources.add().Pack(wrapper)
    client.on_response(beat, handler)
    assert handler.removed == [] and set(client.known) == {"a"}


def test_sotw_reconnect_with_matching_version_info_sends_nothing() -> None:
    resources = (cluster("a"), cluster("b"))
    _, first, _, _ = make(SotwStream, *resources)
    (r,) = first.handle(sreq(CLUSTER, [], with_node=node()))
    # The same client on another replica (another stream, same content): version_info matches, nothing is sent.
    _, other, _, _ = make(SotwStream, *resources)
    resume = sreq(CLUSTER, [], with_node=node())
    resume.version_info = r.version_info
    assert other.handle(resume) == []
    assert dict(other._subs[CLUSTER].sent) == {"a": resources[0].version, "b": resources[1].version}
    # A stale version (the config moved on meanwhile) gets the full state.
    _, moved, _, _ = make(SotwStream, resources[0])
    (full,) = moved.handle(resume)
    assert [x.type_url for x in full.resources] and len(full.resources) == 1


def test_heartbeat_interval() -> None:
    assert interval_for(None) == 1.0
    assert interval_for(3.0) == 1.0
    assert interval_for(0.01) == 0.05


def test_delta_client_drops_ttl_resources_without_heartbeats() -> None:
    short, forever = ttl_cluster("short", 2.0), cluster("forever")
    _, server, hb, _ = make(DeltaStream, short, forever)
    now = [100.0]
    removed: list[str] = []

    class Handler:
        def apply(self, type_url, resources, gone):  # type: ignore[no-untyped-def]
            removed.extend(gone)
            return {}

    session = DeltaSession(node(), [TypeSpec(CLUSTER)], Handler(), clock=lambda: now[0])
    (first,) = server.handle(session.start()[0])
    session.receive(first.message())
    assert session.next_expiry() == 102.0
    now[0] = 101.5
    hb.tick()
    (beat,) = server.flush()
    session.receive(beat.message())  # a heartbeat moves the deadline
    assert session.next_expiry() == 103.5
    now[0] = 103.0
    assert session.expire() == {} and removed == []
    now[0] = 103.6  # no heartbeat since: every replica is gone
    assert session.expire() == {CLUSTER: ["short"]} and removed == ["short"]
    assert set(session.types[CLUSTER].known) == {"forever"}  # no TTL: kept (last known good)
    assert session.next_expiry() is None
    # A new stream does not declare the dropped resource, so a replica that is back sends it again.
    assert dict(session.start()[0].initial_resource_versions) == {"forever": forever.version}
