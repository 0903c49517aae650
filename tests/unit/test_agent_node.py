"""The istiod profile: node id and metadata, per-call headers with a token re-read every call, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from microxds.errors import ConfigError
from microxds.istio.node import DEFAULT_XDS_ADDRESS, NodeProfile


def test_node_id_and_metadata_from_env() -> None:
    env = {
        "INSTANCE_IP": "10.1.2.3",
        "POD_NAME": "ztunnel-abc",
        "POD_NAMESPACE": "istio-system",
        "NODE_NAME": "node-1",
        "ISTIO_META_CLUSTER_ID": "c1",
        "ISTIO_META_ISTIO_VERSION": "1.31.0",
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_METAJSON_LABELS": '{"app": "ztunnel"}',
    }
    p = NodeProfile.from_env(env)
    assert p.node_id == "ztunnel~10.1.2.3~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    assert len(p.node_id.split("~")) == 4
    node = p.node()
    md = node.metadata.fields
    assert md["NAME"].string_value == "ztunnel-abc"
    assert md["NAMESPACE"].string_value == "istio-system"
    assert md["INSTANCE_IPS"].string_value == "10.1.2.3"
    assert md["NODE_NAME"].string_value == "node-1"
    assert md["CLUSTER_ID"].string_value == "c1"
    assert md["ISTIO_VERSION"].string_value == "1.31.0"
    assert md["DNS_CAPTURE"].string_value == "true"
    assert md["LABELS"].struct_value.fields["app"].string_value == "ztunnel"


def test_defaults_follow_ztunnel() -> None:
    p = NodeProfile.from_env({})
    assert p.node_id == "ztunnel~1.1.1.1~ztunnel.istio-system~istio-system.svc.cluster.local"
    assert p.xds_address == p.ca_address == DEFAULT_XDS_ADDRESS == "istiod.istio-system.svc:15012"
    assert p.cluster_id == "Kubernetes"
    assert not p.on_demand


def test_addresses_roots_and_on_demand_settings() -> None:
    p = NodeProfile.from_env(
        {"XDS_ADDRESS": "127.0.0.1:15012", "XDS_ROOT_CA": "/r.pem", "CLUSTER_ID": "c2", "XDS_ON_DEMAND": "true"}
    )
    assert p.xds_address == p.ca_address == "127.0.0.1:15012"  # CA_ADDRESS defaults to XDS_ADDRESS
    assert p.xds_root_ca == p.ca_root_ca == "/r.pem"
    assert p.cluster_id == "c2" and p.on_demand
    q = NodeProfile.from_env({"XDS_ADDRESS": "a:1", "CA_ADDRESS": "b:2", "CA_ROOT_CA": "SYSTEM"})
    assert (q.xds_address, q.ca_address, q.ca_root_ca) == ("a:1", "b:2", "SYSTEM")
    q.ssl_context(ca=True)  # SYSTEM roots load
    with pytest.raises(ConfigError):
        NodeProfile(xds_root_ca="/nonexistent/root.pem").ssl_context()


def test_token_is_read_on_every_call(tmp_path: Path) -> None:
    token = tmp_path / "istio-token"
    token.write_text("first\n")
    p = NodeProfile.from_env({"AUTH_TOKEN": str(token), "XDS_HEADER_X_TENANT": "t1", "CA_HEADER_X_CA": "y"})
    assert p.headers() == [("clusterid", "Kubernetes"), ("authorization", "Bearer first"), ("x-tenant", "t1")]
    token.write_text("second")
    assert ("authorization", "Bearer second") in p.headers()
    assert ("x-ca", "y") in p.headers(ca=True) and ("x-tenant", "t1") not in p.headers(ca=True)


async def test_metadata_provider_and_literal_or_missing_tokens(tmp_path: Path) -> None:
    literal = NodeProfile.from_env({"AUTH_TOKEN": "literal-jwt"})
    assert ("authorization", "Bearer literal-jwt") in await literal.metadata_provider()()
    missing = NodeProfile(token_path=str(tmp_path / "absent"))
    assert missing.headers() == [("clusterid", "Kubernetes")]


def test_bad_metajson_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ISTIO_METAJSON_X"):
        NodeProfile.from_env({"ISTIO_METAJSON_X": "{not json"})
