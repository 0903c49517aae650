"""Istio CA API: the dev CA's signing rules and the client's chain handling, without sockets."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest

from hbone.errors import GrpcError, GrpcStatus, IdentityError
from hbone.identity import SpiffeId, build_csr
from hbone.identity.certs import cert_to_pem, csr_to_pem, generate_key, spiffe_ids_of
from hbone.testing import TestCA
from microxds._pb.istio.v1.auth import ca_pb2
from microxds.istio.ca import CREATE_CERTIFICATE, CaPolicy, CaService, IstioCASource, parse_chain, register_ca

NODE = SpiffeId.parse("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
ALICE = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/alice")
BOB = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bob")


@dataclass
class Peer:
    identity: SpiffeId | None


@dataclass
class Call:
    peer: Peer


def policy() -> CaPolicy:
    return CaPolicy(
        trusted_node_identities=["spiffe://cluster.local/ns/istio-system/sa/ztunnel"],
        max_ttl=dt.timedelta(days=90),
        default_ttl=dt.timedelta(hours=24),
        trust_domain="cluster.local",
    )


def test_caller_gets_its_own_identity_with_default_ttl() -> None:
    d = policy().decide(ALICE, 0, None)
    assert d.identity == ALICE and d.ttl == dt.timedelta(hours=24)
    assert policy().decide(ALICE, 3600, str(ALICE)).ttl == dt.timedelta(hours=1)  # self-impersonation is fine


def test_impersonation_only_for_trusted_nodes() -> None:
    with pytest.raises(GrpcError) as err:
        policy().decide(ALICE, 0, str(BOB))
    assert err.value.status is GrpcStatus.UNAUTHENTICATED
    assert "impersonation" in err.value.message
    assert policy().decide(NODE, 0, str(BOB)).identity == BOB


def test_impersonated_identity_must_be_istio_shaped_and_same_trust_domain() -> None:
    with pytest.raises(GrpcError) as err:
        policy().decide(NODE, 0, "spiffe://cluster.local/not-istio")
    assert err.value.status is GrpcStatus.INVALID_ARGUMENT
    with pytest.raises(GrpcError) as err:
        policy().decide(NODE, 0, "spiffe://other.td/ns/default/sa/bob")
    assert err.value.status is GrpcStatus.UNAUTHENTICATED


def test_ttl_over_max_and_anonymous_or_foreign_callers_are_refused() -> None:
    with pytest.raises(GrpcError) as err:
        policy().decide(ALICE, 91 * 86400, None)
    assert err.value.status is GrpcStatus.INVALID_ARGUMENT and "max allowed TTL" in err.value.message
    assert policy().decide(ALICE, 90 * 86400, None).ttl == dt.timedelta(days=90)
    with pytest.raises(GrpcError) as err:
        policy().decide(None, 0, None)
    assert err.value.status is GrpcStatus.UNAUTHENTICATED
    with pytest.raises(GrpcError):
        policy().decide(SpiffeId.parse("spiffe://evil.td/ns/default/sa/alice"), 0, None)


async def test_service_signs_for_the_caller_never_the_csr_san() -> None:
    ca = TestCA()
    service = CaService(ca.signer, policy())
    key = generate_key()
    req = ca_pb2.IstioCertificateRequest(csr=csr_to_pem(build_csr(key, BOB)).decode(), validity_duration=600)
    resp = await service.create_certificate(req, Call(Peer(ALICE)))
    chain, roots = parse_chain(list(resp.cert_chain), ALICE)
    assert spiffe_ids_of(chain[0]) == [ALICE]  # the CSR asked for bob; the caller is alice
    assert roots == (ca.root.cert,)
    assert all(p.endswith("\n") for p in resp.cert_chain)
    life = chain[0].not_valid_after_utc - chain[0].not_valid_before_utc
    assert dt.timedelta(minutes=10) <= life <= dt.timedelta(minutes=16)  # 10 min plus the 5 min backdate
    with pytest.raises(GrpcError):
        await service.create_certificate(ca_pb2.IstioCertificateRequest(csr="junk"), Call(Peer(ALICE)))
    assert (service.issued, service.refused) == (1, 1)


def test_parse_chain_takes_every_root_of_the_last_element() -> None:
    a, b = TestCA(), TestCA()
    bundle = a.signer.issue(ALICE)
    pems = [cert_to_pem(bundle.leaf).decode(), (cert_to_pem(a.root.cert) + cert_to_pem(b.root.cert)).decode()]
    chain, roots = parse_chain(pems, ALICE)
    assert roots == (a.root.cert, b.root.cert) and len(chain) == 3
    with pytest.raises(IdentityError, match="was requested"):
        parse_chain(pems, BOB)
    with pytest.raises(IdentityError):
        parse_chain([], ALICE)


class LoopbackChannel:
    """Calls the service directly, as the gRPC layer would, with a fixed caller identity."""

    def __init__(self, service: CaService, caller: SpiffeId) -> None:
        self.service, self.caller, self.paths = service, caller, []  # type: list[str]

    async def unary(self, path: str, request: Any, **_: Any) -> Any:
        self.paths.append(path)
        return await self.service.create_certificate(request, Call(Peer(self.caller)))


async def test_client_impersonates_from_the_node_and_gets_a_valid_bundle() -> None:
    ca = TestCA(intermediate=True)
    channel = LoopbackChannel(CaService(ca.signer, policy()), NODE)
    source = IstioCASource(channel, BOB, ttl=dt.timedelta(hours=2), impersonate=True)
    bundle = await source.fetch()
    assert channel.paths == [CREATE_CERTIFICATE]
    assert bundle.identity == BOB and bundle.roots == (ca.root.cert,)
    bundle.check_valid()
    assert len(bundle.chain) == 3  # leaf, intermediate, root
    # Without impersonation the CA signs the caller (the node), and the client refuses the mismatch.
    with pytest.raises(IdentityError):
        await IstioCASource(channel, BOB).fetch()


def test_register_ca_adds_the_unary_method() -> None:
    added: dict[str, Any] = {}

    class Registrar:
        def add_unary(self, path: str, handler: Any, request_codec: Any, response_codec: Any) -> None:
            added[path] = handler

    service = register_ca(Registrar(), TestCA().root, trusted_node_identities=[str(NODE)])
    assert list(added) == [CREATE_CERTIFICATE]
    assert service.policy.trust_domain == "cluster.local"
