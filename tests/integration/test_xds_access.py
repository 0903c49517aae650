"""Access rules: which SPIFFE identities and JWT subjects may read which node groups.

Pure decisions first, then the real thing: an HBONE mTLS listener where the caller's certificate decides, and a
plaintext listener where a bearer JWT does; everything else gets PERMISSION_DENIED (or UNAUTHENTICATED for a bad
token).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from hbone.identity import IdentityManager
from hbone.testing import TestCA
from hbone.tls import MeshTls
from microxds.errors import ConfigError
from microxds.resources import CLUSTER
from microxds.server.access import AccessPolicy, AccessRule, Caller, JwtVerifier, Unauthenticated, policy_from_mapping
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(30)
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
SOTW = {"request_codec": ProtoCodec(d.DiscoveryRequest), "response_codec": ProtoCodec(d.DiscoveryResponse)}
EDGE = "spiffe://cluster.local/ns/edge/sa/gw"
REMOTE = ("10.1.2.3", 4000)
LOCAL = ("127.0.0.1", 4000)


def test_default_policy_allows_loopback_and_authenticated_only() -> None:
    policy = AccessPolicy.permissive_default()
    assert policy.allows(Caller(address=LOCAL), "any")
    assert policy.allows(Caller(address=("::1", 1)), "any")
    assert policy.allows(Caller(identity=EDGE, address=REMOTE, transport="mtls"), "any")
    assert not policy.allows(Caller(address=REMOTE), "any")
    assert not policy.allows(Caller(address=None), "")


def test_rules_match_identity_subject_and_group_globs() -> None:
    policy = policy_from_mapping({
        "allow_loopback": False,
        "rules": [
            {"identities": ["spiffe://cluster.local/ns/edge/*"], "groups": ["edge", "edge-*"]},
            {"subjects": "system:serviceaccount:ops:*", "groups": "*"},
        ],
    })  # fmt: skip
    assert policy.allows(Caller(identity=EDGE, address=REMOTE), "edge-eu")
    assert not policy.allows(Caller(identity=EDGE, address=REMOTE), "core")
    assert not policy.allows(Caller(identity="spiffe://cluster.local/ns/core/sa/x", address=LOCAL), "edge")
    assert policy.allows(Caller(subject="system:serviceaccount:ops:dump", address=REMOTE), "core")
    assert not policy.allows(Caller(subject="system:serviceaccount:dev:dump", address=REMOTE), "core")
    assert not policy.allows(Caller(address=LOCAL), "edge")  # allow_loopback: false
    assert AccessPolicy(rules=(AccessRule(identities=(EDGE,)),), allow_loopback=False).allows(
        Caller(identity=EDGE), "whatever"
    )


@pytest.mark.parametrize(
    "doc",
    [{"bogus": 1}, {"rules": [{"groups": ["x"]}]}, {"rules": [{"identities": [1]}]}, {"rules": ["x"]}],
)
def test_bad_access_files_are_config_errors(doc: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        policy_from_mapping(doc, "access.yaml")


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "xds.json"
    cluster = {"@type": CLUSTER, "name": "c", "type": "STATIC", "connect_timeout": "1s"}
    config.write_text(json.dumps({"resources": [cluster]}))
    return config


async def _ask(channel: Channel, node_id: str) -> d.DiscoveryResponse:
    async with channel.stream(ADS, **SOTW) as call:
        await call.send(d.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER))
        resp: d.DiscoveryResponse = await asyncio.wait_for(call.recv(), 5)
        return resp


XDS_ID = "spiffe://cluster.local/ns/istio-system/sa/microxds"


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
async def mtls_plane(tmp_path: Path, ca: TestCA) -> AsyncIterator[ControlPlane]:
    ca.write(tmp_path / "server", "istio-system", "microxds")
    policy = policy_from_mapping({"allow_loopback": False, "rules": [{"identities": [EDGE], "groups": ["edge*"]}]})
    opts = ServeOptions(
        config=_config(tmp_path), listen=None, hbone_listen="127.0.0.1:0", certs=tmp_path / "server", access=policy
    )
    cp = ControlPlane(opts)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(0.5)


async def test_mtls_identity_decides_the_groups(mtls_plane: ControlPlane, ca: TestCA) -> None:
    host, port = mtls_plane.addresses["hbone"]
    edge = MeshTls(IdentityManager.fixed(ca.issue("edge", "gw")))
    async with Channel(f"{host}:{port}", tls=edge, expected_identities=[XDS_ID]) as ch:
        resp = await _ask(ch, "edge-1")
        assert len(resp.resources) == 1
        with pytest.raises(GrpcError) as err:
            await _ask(ch, "core-1")
        assert err.value.status == GrpcStatus.PERMISSION_DENIED
    other = MeshTls(IdentityManager.fixed(ca.issue("core", "app")))
    async with Channel(f"{host}:{port}", tls=other, expected_identities=[XDS_ID]) as ch:
        with pytest.raises(GrpcError) as err:
            await _ask(ch, "edge-1")
        assert err.value.status == GrpcStatus.PERMISSION_DENIED
    assert mtls_plane.service.denied == 2
    assert len(mtls_plane.registry) == 0  # denied streams leave nothing behind


def _es256_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "jwt.pub"
    pem.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pem


def _token(key: ec.EllipticCurvePrivateKey, sub: str, aud: str = "microxds") -> str:
    exp = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    return jwt.encode({"sub": sub, "iss": "test", "aud": aud, "exp": exp}, key, algorithm="ES256")


def test_jwt_verifier(tmp_path: Path) -> None:
    key, pem = _es256_key(tmp_path)
    verifier = JwtVerifier.from_files([pem], issuer="test", audiences=["microxds"])
    assert verifier.subject(_token(key, "system:serviceaccount:ops:dump")) == "system:serviceaccount:ops:dump"
    with pytest.raises(Unauthenticated):
        verifier.subject(_token(key, "x", aud="other"))
    with pytest.raises(Unauthenticated):
        verifier.subject(_token(ec.generate_private_key(ec.SECP256R1()), "x"))


async def test_jwt_subject_on_plaintext_listener(tmp_path: Path) -> None:
    key, pem = _es256_key(tmp_path)
    policy = policy_from_mapping({"allow_loopback": False, "rules": [{"subjects": ["ops:*"], "groups": ["*"]}]})
    opts = ServeOptions(
        config=_config(tmp_path),
        listen="127.0.0.1:0",
        access=policy,
        jwt=JwtVerifier.from_files([pem], issuer="test", audiences=["microxds"]),
    )
    cp = ControlPlane(opts)
    await cp.start()
    try:
        host, port = cp.addresses["plaintext"]
        cases = [
            ([("authorization", "Bearer " + _token(key, "ops:dump"))], None),
            ([("authorization", "Bearer " + _token(key, "dev:dump"))], GrpcStatus.PERMISSION_DENIED),
            ([("authorization", "Bearer not-a-jwt")], GrpcStatus.UNAUTHENTICATED),
            ([], GrpcStatus.PERMISSION_DENIED),
        ]
        for metadata, expected in cases:
            async with Channel(f"{host}:{port}", metadata=metadata) as ch:
                if expected is None:
                    assert len((await _ask(ch, "n")).resources) == 1
                    continue
                with pytest.raises(GrpcError) as err:
                    await _ask(ch, "n")
                assert err.value.status == expected
    finally:
        await cp.stop(0.5)
