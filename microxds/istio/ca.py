"""The Istio CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`): client and dev CA service.

Client (`IstioCASource`, a `hbone.identity.CertificateSource`): a fresh P-256 key per request, a CSR with an empty
subject and one critical URI SAN, the wanted validity, and `ImpersonatedIdentity` metadata when a node agent asks
on behalf of a workload. The answer is `[leaf, intermediates..., roots]`; the trust anchors are the *last*
element (which may hold several PEM roots), and the leaf must carry the identity we asked for. Rotation at
half-life with 0.5 s → 150 s backoff and the old certificate kept until expiry is `IdentityManager`'s job.

Server (`CaService`, `register_ca`): signs for the authenticated caller only — never for the CSR's SANs
(docs/istio.md §3). A caller whose identity is in `trusted_node_identities` may ask for another identity through
`ImpersonatedIdentity`; anyone else asking for an identity not its own is refused with UNAUTHENTICATED, like
istiod. TTL: ≤ 0 means `default_ttl`; above `max_ttl` is refused (INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

from cryptography import x509
from google.protobuf import struct_pb2

from hbone.errors import GrpcError, GrpcStatus, IdentityError
from hbone.grpc.codec import ProtoCodec
from hbone.identity.certs import (
    CertificateAuthority,
    CertifiedKey,
    build_csr,
    cert_to_pem,
    csr_to_pem,
    generate_key,
    load_pem_certs,
    spiffe_ids_of,
)
from hbone.identity.spiffe import SpiffeId

from .._pb.istio.v1.auth import ca_pb2

log = logging.getLogger("microxds.ca")

SERVICE = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
DEFAULT_TTL = dt.timedelta(hours=24)  # SECRET_TTL / DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = dt.timedelta(days=90)  # MAX_WORKLOAD_CERT_TTL


# --- server --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningDecision:
    identity: SpiffeId
    ttl: dt.timedelta


class CaPolicy:
    """Who may get a certificate for which identity, for how long. Pure: `decide(caller, request)`."""

    def __init__(
        self,
        *,
        trusted_node_identities: Iterable[str] = (),
        max_ttl: dt.timedelta = MAX_TTL,
        default_ttl: dt.timedelta = DEFAULT_TTL,
        trust_domain: str | None = None,
    ) -> None:
        # Globs on the SPIFFE id, e.g. "spiffe://cluster.local/ns/istio-system/sa/ztunnel" (CA_TRUSTED_NODE_ACCOUNTS)
        self.trusted = tuple(trusted_node_identities)
        self.max_ttl = max_ttl
        self.default_ttl = default_ttl
        self.trust_domain = trust_domain

    def decide(self, caller: SpiffeId | None, requested_ttl_seconds: int, impersonate: str | None) -> SigningDecision:
        if caller is None:
            raise GrpcError(GrpcStatus.UNAUTHENTICATED, "no caller identity: call over mTLS with a mesh certificate")
        if self.trust_domain is not None and caller.trust_domain != self.trust_domain:
            raise GrpcError(GrpcStatus.UNAUTHENTICATED, f"caller {caller} is not in trust domain {self.trust_domain}")
        identity = caller
        if impersonate and impersonate != str(caller):
            if not any(fnmatchcase(str(caller), pattern) for pattern in self.trusted):
                raise GrpcError(
                    GrpcStatus.UNAUTHENTICATED,
                    f"request impersonation authentication failure: {caller} is not a trusted node identity",
                )
            try:
                identity = SpiffeId.parse_istio(impersonate)
            except IdentityError as exc:
                raise GrpcError(GrpcStatus.INVALID_ARGUMENT, f"bad {IMPERSONATED_IDENTITY}: {exc}") from None
            if identity.trust_domain != caller.trust_domain:
                raise GrpcError(GrpcStatus.UNAUTHENTICATED, f"{identity} is outside the caller's trust domain")
        if requested_ttl_seconds <= 0:
            ttl = self.default_ttl
        else:
            ttl = dt.timedelta(seconds=requested_ttl_seconds)
            if ttl > self.max_ttl:
                raise GrpcError(
                    GrpcStatus.INVALID_ARGUMENT,
                    f"requested TTL {requested_ttl_seconds}s is greater than the max allowed TTL "
                    f"{int(self.max_ttl.total_seconds())}s",
                )
        return SigningDecision(identity, ttl)


class _Call(Protocol):
    @property
    def peer(self) -> Any: ...


def _impersonated(req: ca_pb2.IstioCertificateRequest) -> str | None:
    if not req.HasField("metadata"):
        return None
    value = req.metadata.fields.get(IMPERSONATED_IDENTITY)
    return value.string_value if value is not None and value.string_value else None


class CaService:
    """The dev CA behind `CreateCertificate`. Signing runs in a thread (ECDSA is cheap, but not free)."""

    def __init__(self, ca: CertificateAuthority, policy: CaPolicy) -> None:
        self.ca = ca
        self.policy = policy
        self.issued = 0
        self.refused = 0

    async def create_certificate(
        self, req: ca_pb2.IstioCertificateRequest, call: _Call
    ) -> ca_pb2.IstioCertificateResponse:
        caller = getattr(call.peer, "identity", None)
        try:
            decision = self.policy.decide(caller, req.validity_duration, _impersonated(req))
            try:
                csr = x509.load_pem_x509_csr(req.csr.encode())
            except ValueError as exc:
                raise GrpcError(GrpcStatus.INVALID_ARGUMENT, f"CSR is not valid PEM: {exc}") from None
            try:
                chain = await asyncio.to_thread(self.ca.sign_csr, csr, decision.identity, ttl=decision.ttl)
            except IdentityError as exc:
                raise GrpcError(GrpcStatus.INVALID_ARGUMENT, str(exc)) from None
        except GrpcError as exc:
            self.refused += 1
            log.warning("CA refused %s: %s", caller, exc.message)
            raise
        self.issued += 1
        log.info("CA issued %s (caller %s, ttl %s)", decision.identity, caller, decision.ttl)
        # One PEM per element, roots last, each ending in "\n" (istiod's form).
        return ca_pb2.IstioCertificateResponse(cert_chain=[cert_to_pem(c).decode() for c in chain])


class _Registrar(Protocol):
    def add_unary(self, path: str, handler: Any, request_codec: Any, response_codec: Any) -> None: ...


def register_ca(
    grpc_server: _Registrar,
    ca: CertificateAuthority,
    *,
    trusted_node_identities: Iterable[str] = (),
    max_ttl: dt.timedelta = MAX_TTL,
    default_ttl: dt.timedelta = DEFAULT_TTL,
) -> CaService:
    """Serve `CreateCertificate` on a `GrpcServer` (put it on an mTLS listener: callers are known by certificate)."""
    service = CaService(
        ca,
        CaPolicy(
            trusted_node_identities=trusted_node_identities,
            max_ttl=max_ttl,
            default_ttl=default_ttl,
            trust_domain=ca.trust_domain,
        ),
    )
    grpc_server.add_unary(
        CREATE_CERTIFICATE,
        service.create_certificate,
        ProtoCodec(ca_pb2.IstioCertificateRequest),
        ProtoCodec(ca_pb2.IstioCertificateResponse),
    )
    return service


# --- client --------------------------------------------------------------------------------------------------


class _UnaryChannel(Protocol):
    async def unary(
        self,
        path: str,
        request: Any,
        *,
        request_codec: Any = ...,
        response_codec: Any = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 - a gRPC deadline
    ) -> Any: ...


Chain = tuple[x509.Certificate, ...]


def parse_chain(pems: Sequence[str], identity: SpiffeId) -> tuple[Chain, Chain]:
    """`cert_chain` → (chain, roots): roots are every certificate in the last element; the leaf must be `identity`."""
    if not pems:
        raise IdentityError("CA returned an empty certificate chain")
    elements = [load_pem_certs(p.encode(), source=f"cert_chain[{i}]") for i, p in enumerate(pems)]
    roots = tuple(elements[-1])
    chain = tuple(c for element in elements for c in element)
    leaf_ids = spiffe_ids_of(chain[0])
    if identity not in leaf_ids:
        got = ", ".join(map(str, leaf_ids)) or "no SPIFFE id"
        raise IdentityError(f"CA signed {got}, but {identity} was requested")
    return chain, roots


class IstioCASource:
    """A `CertificateSource` for one identity, asking an Istio-compatible CA (istiod or microxds)."""

    def __init__(
        self,
        channel: _UnaryChannel,
        identity: SpiffeId,
        *,
        ttl: dt.timedelta = DEFAULT_TTL,
        impersonate: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.channel = channel
        self.identity = identity
        self.ttl = ttl
        self.impersonate = impersonate
        self.timeout = timeout
        self.requests = 0

    def _request(self) -> tuple[Any, ca_pb2.IstioCertificateRequest]:
        key = generate_key()
        req = ca_pb2.IstioCertificateRequest(
            csr=csr_to_pem(build_csr(key, self.identity)).decode(), validity_duration=int(self.ttl.total_seconds())
        )
        if self.impersonate:
            req.metadata.CopyFrom(struct_pb2.Struct())
            req.metadata.update({IMPERSONATED_IDENTITY: str(self.identity)})
        return key, req

    async def fetch(self) -> CertifiedKey:
        self.requests += 1
        key, req = await asyncio.to_thread(self._request)
        resp = await self.channel.unary(
            CREATE_CERTIFICATE,
            req,
            request_codec=ProtoCodec(ca_pb2.IstioCertificateRequest),
            response_codec=ProtoCodec(ca_pb2.IstioCertificateResponse),
            timeout=self.timeout,
        )
        chain, roots = parse_chain(list(resp.cert_chain), self.identity)
        return CertifiedKey(key, chain, roots)


def attach_ca(
    plane: Any,
    ca: CertificateAuthority,
    *,
    trusted_node_identities: Iterable[str] = (),
    max_ttl: dt.timedelta = MAX_TTL,
    default_ttl: dt.timedelta = DEFAULT_TTL,
) -> list[CaService]:
    """Serve the CA on a `microxds.server.app.ControlPlane` (before `start()`), next to its xDS services.

    ControlPlane registers its services on the GrpcServer it builds in `start()`, through `plane.service.register`;
    we chain onto that hook so the CA is on every listener (callers are identified on the HBONE mTLS one).
    """
    services: list[CaService] = []
    register = plane.service.register

    def register_with_ca(server: Any) -> None:
        register(server)
        services.append(
            register_ca(
                server, ca, trusted_node_identities=trusted_node_identities, max_ttl=max_ttl, default_ttl=default_ttl
            )
        )

    plane.service.register = register_with_ca
    return services
