"""Per-client status, CSDS ClientStatusResponse and Prometheus metrics on an injected registry."""

from __future__ import annotations

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2
from prometheus_client import CollectorRegistry

from microxds.cache import Snapshot, SnapshotCache
from microxds.resources import CLUSTER, ENDPOINT
from microxds.server.delta import DeltaStream
from microxds.server.sotw import SotwStream
from microxds.server.status import StatusRegistry, XdsMetrics
from tests.unit.test_xds_fixtures import cla, cluster, dreq, node, req


def test_csds_reports_acked_nacked_and_requested() -> None:
    registry = CollectorRegistry()
    status = StatusRegistry(XdsMetrics(registry))
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", Snapshot.of([cluster("c1"), cla("e1")]))
    cache.set_snapshot("n2", Snapshot.of([cluster("c1")]))
    s = SotwStream(cache, registry=status, peer="10.0.0.1:5000")
    (c,) = s.handle(req(CLUSTER, with_node=node("n1")))
    s.handle(req(CLUSTER, nonce=c.nonce, version=c.version_info))
    (e,) = s.handle(req(ENDPOINT, ["e1", "missing"]))
    s.handle(req(ENDPOINT, ["e1", "missing"], nonce=e.nonce, nack="duplicate address"))
    d = DeltaStream(cache, registry=status)
    d.handle(dreq(CLUSTER, ["*"], with_node=node("n2")))
    assert registry.get_sample_value("microxds_xds_clients", {"protocol": "sotw"}) == 1
    assert registry.get_sample_value("microxds_xds_clients", {"protocol": "delta"}) == 1

    resp = status.client_status_response(include_resources=True)
    assert isinstance(resp, csds_pb2.ClientStatusResponse) and len(resp.config) == 2
    cfg = {(g.type_url, g.name): g for g in resp.config[0].generic_xds_configs}
    assert resp.config[0].node.id == "n1"
    ok = cfg[(CLUSTER, "c1")]
    assert ok.client_status == config_dump_shared_pb2.ClientResourceStatus.ACKED
    assert ok.config_status == csds_pb2.SYNCED and ok.version_info == cluster("c1").version
    assert ok.xds_config.type_url == CLUSTER
    bad = cfg[(ENDPOINT, "e1")]
    assert bad.client_status == config_dump_shared_pb2.ClientResourceStatus.NACKED
    assert bad.config_status == csds_pb2.ERROR
    assert bad.error_state.details == "duplicate address" and bad.error_state.version_info == e.version_info
    assert bad.error_state.last_update_attempt.seconds > 0
    assert cfg[(ENDPOINT, "missing")].config_status == csds_pb2.NOT_SENT
    only_n2 = status.client_status_response(lambda n: n.id == "n2")
    assert [c.node.id for c in only_n2.config] == ["n2"]
    unacked = only_n2.config[0].generic_xds_configs[0]
    assert unacked.config_status == csds_pb2.STALE

    assert registry.get_sample_value("microxds_xds_pushes_total", {"type": CLUSTER}) == 2
    assert registry.get_sample_value("microxds_xds_nacks_total", {"type": ENDPOINT}) == 1
    s.close()
    d.close()
    assert len(status) == 0
    assert registry.get_sample_value("microxds_xds_clients", {"protocol": "sotw"}) == 0
