"""The etcd store's layout and `apply` planning, without etcd: keys, per-key validation, canonical values, plans."""

from __future__ import annotations

import json

import pytest

from microxds._pb.etcd.etcdserverpb import rpc_pb2
from microxds.errors import ConfigError
from microxds.etcd.client import StoreURL, prefix_end
from microxds.resources import CLUSTER, ENDPOINT
from microxds.sources.storekeys import assemble, desired_keys, key_for, parse_entry, render, split_key
from microxds.sources.yamlconfig import parse_texts
from microxds.store import Stored, plan, transaction

P = "/mx/"
CLA = {"@type": ENDPOINT, "cluster_name": "web", "endpoints": [{"lb_endpoints": [
    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}}}}]}]}  # fmt: skip


def test_store_url() -> None:
    url = StoreURL.parse("etcd://a:2379,b:2379/microxds/prod/")
    assert url.endpoints == ("a:2379", "b:2379") and url.prefix == "/microxds/prod/" and not url.tls
    assert StoreURL.parse("etcds://a:1/x").tls
    assert str(url) == "etcd://a:2379,b:2379/microxds/prod"
    for bad in ("http://a:1/x", "etcd://a:1", "etcd://a:1/", "etcd:///x", "etcd://a/x", "etcd://a:99999/x"):
        with pytest.raises(ConfigError):
            StoreURL.parse(bad)


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_keys_round_trip_with_slashes_and_groups() -> None:
    k = key_for(P, "type.googleapis.com/istio.security.Authorization", "ns/deny", "edge")
    assert k == "/mx/groups/edge/istio.security.Authorization/ns/deny"
    assert split_key(P, k) == ("edge", "type.googleapis.com/istio.security.Authorization", "ns/deny")
    assert split_key(P, key_for(P, CLUSTER, "web")) == ("", CLUSTER, "web")
    for bad in ("/mx/web", "/mx/groups/edge", "/mx/Cluster/web", "/mx/envoy.config.cluster.v3.Cluster/"):
        with pytest.raises(ConfigError):
            split_key(P, bad)


def test_parse_entry_accepts_yaml_and_json_and_checks_the_key() -> None:
    k = key_for(P, ENDPOINT, "web")
    a = parse_entry(P, k, json.dumps(CLA).encode())
    b = parse_entry(P, k, b"'@type': " + ENDPOINT.encode() + b"\ncluster_name: web\nendpoints: "
                    + json.dumps(CLA["endpoints"]).encode())  # fmt: skip
    assert a.resource.version == b.resource.version
    with pytest.raises(ConfigError, match="but the key names"):
        parse_entry(P, key_for(P, ENDPOINT, "other"), json.dumps(CLA).encode())
    with pytest.raises(ConfigError, match="found 2"):
        parse_entry(P, k, b"{}\n---\n{}\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_entry(P, k, b"\xff\xfe")
    bad = {**CLA, "endpoints": [{"lb_endpoints": [{"load_balancing_weight": 0}]}]}
    with pytest.raises(ConfigError) as err:  # the protos' validate rules apply, as for files
        parse_entry(P, k, json.dumps(bad).encode())
    assert str(err.value).startswith(k + ":")


def test_render_is_canonical_and_keeps_ttl() -> None:
    wrapped = {"@type": "type.googleapis.com/envoy.service.discovery.v3.Resource", "ttl": "2.5s", "resource": CLA}
    snap = parse_texts([("c.yaml", json.dumps({"resources": [wrapped]}))])
    res = snap.get(ENDPOINT, "web")
    assert res is not None and res.ttl == 2.5
    value = render(res)
    back = parse_entry(P, key_for(P, ENDPOINT, "web"), value).resource
    assert back.version == res.version and back.ttl == 2.5
    assert render(back) == value


def test_plan_and_transaction() -> None:
    text = json.dumps({"resources": [CLA], "groups": {"edge": {"resources": [{**CLA, "cluster_name": "edge"}]}}})
    snap = parse_texts([("c.json", text)])
    want = desired_keys(P, snap)
    assert set(want) == {key_for(P, ENDPOINT, "web"), key_for(P, ENDPOINT, "edge", "edge")}
    stored = {
        key_for(P, ENDPOINT, "web"): Stored(render(want[key_for(P, ENDPOINT, "web")]), 5),  # same: unchanged
        key_for(P, ENDPOINT, "stray"): Stored(b"{}", 6),
    }
    p = plan(P, stored, snap, prune=True)
    assert list(p.created) == [key_for(P, ENDPOINT, "edge", "edge")] and p.unchanged == 1
    assert p.deleted == [key_for(P, ENDPOINT, "stray")] and not p.updated
    txn = transaction(p, stored)
    assert [c.target for c in txn.compare] == [rpc_pb2.Compare.VERSION, rpc_pb2.Compare.MOD]
    assert txn.compare[1].mod_revision == 6
    assert [op.WhichOneof("request") for op in txn.success] == ["request_put", "request_delete_range"]
    assert not plan(P, stored, snap, prune=False).deleted


def test_assemble_merges_groups_over_common() -> None:
    common = parse_entry(P, key_for(P, ENDPOINT, "web"), json.dumps(CLA).encode())
    own = parse_entry(P, key_for(P, ENDPOINT, "web", "edge"), json.dumps({**CLA, "endpoints": []}).encode())
    snap = assemble([common, own])
    assert snap.get(ENDPOINT, "web") == common.resource
    assert snap.get(ENDPOINT, "web", "edge") == own.resource
    assert snap.origin(ENDPOINT, "web", "edge") == key_for(P, ENDPOINT, "web", "edge") + ":1"
