"""mTLS contexts for HBONE, and peer identity checks after the handshake.

Like ztunnel (docs/hbone-spec.md): TLS 1.3 only unless TLS 1.2 is opted in, ALPN `h2`, client certificates
required, chains verified against the mesh roots (OpenSSL checks the clientAuth/serverAuth EKU for the role), no
SNI, no session resumption. Python's ssl has no per-certificate verification hook, so the SPIFFE checks run right
after the handshake: the server accepts only peers of its own trust domain, the client only a server whose URI
SANs include one of the identities it expected.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from hbone.errors import PeerIdentityError
from hbone.identity.certs import CertifiedKey, spiffe_ids_of
from hbone.identity.manager import IdentityManager
from hbone.identity.spiffe import SpiffeId

ALPN_H2 = "h2"
# TLS 1.2 suites ztunnel allows when TLS12_ENABLED is set: ECDHE with AES-GCM only.
_TLS12_CIPHERS = ":".join(
    f"ECDHE-{kind}-AES{bits}-GCM-SHA{sha}" for kind in ("ECDSA", "RSA") for bits, sha in ((256, 384), (128, 256))
)


@dataclass(frozen=True)
class TlsOptions:
    allow_tls12: bool = False
    alpn: tuple[str, ...] = (ALPN_H2,)
    #: False: a client certificate is asked for and verified when sent, but optional (server-auth TLS for Envoy
    #: and gRPC clients that authenticate by JWT instead).
    require_client_cert: bool = True


class DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose data-path methods are the C object's own.

    asyncio's and uvloop's TLS transports call `read`, `write` and `pending` on every TLS read and write, and
    `ssl.SSLObject`'s versions only pass the call on to the C object, a Python frame each: four per 1 KiB round trip
    in each proxy of the HBONE hop (RESULTS-hbone.md round 6). Every caller passes the size to `read`, as the C
    method requires (the wrapper's default is 1024).
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        raw = obj._sslobj  # type: ignore[attr-defined]
        vars(obj).update(read=raw.read, write=raw.write, pending=raw.pending)
        return obj


def _load_cert(ctx: ssl.SSLContext, bundle: CertifiedKey) -> None:
    # ssl can only load certificates from files; use a private temporary directory that is removed at once.
    with tempfile.TemporaryDirectory(prefix="hbone-tls-") as d:
        os.chmod(d, 0o700)
        chain, key = os.path.join(d, "chain.pem"), os.path.join(d, "key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.key_pem())
        with open(chain, "wb") as f:
            f.write(bundle.chain_pem())
        ctx.load_cert_chain(chain, key)


def _base(ctx: ssl.SSLContext, bundle: CertifiedKey, options: TlsOptions) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if options.allow_tls12 else ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if options.allow_tls12:
        ctx.set_ciphers(_TLS12_CIPHERS)
    if options.alpn:
        ctx.set_alpn_protocols(list(options.alpn))
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    _load_cert(ctx, bundle)
    ctx.load_verify_locations(cadata=bundle.roots_pem().decode())
    return ctx


def server_context(bundle: CertifiedKey, options: TlsOptions = TlsOptions()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = DirectSSLObject
    _base(ctx, bundle, options)
    ctx.verify_mode = ssl.CERT_REQUIRED if options.require_client_cert else ssl.CERT_OPTIONAL
    # No resumption: every connection authenticates afresh, and no tickets race a quick client close.
    ctx.num_tickets = 0
    return ctx


def client_context(
    bundle: CertifiedKey | None, roots_pem: bytes | None = None, options: TlsOptions = TlsOptions()
) -> ssl.SSLContext:
    """A client context. With `bundle`, presents it and trusts its roots; `roots_pem` adds or replaces roots."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = DirectSSLObject
    # The server is identified by SPIFFE SAN after the handshake, never by DNS name (no SNI either).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if bundle is not None:
        _base(ctx, bundle, options)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if options.allow_tls12 else ssl.TLSVersion.TLSv1_3
        if options.alpn:
            ctx.set_alpn_protocols(list(options.alpn))
    if roots_pem:
        ctx.load_verify_locations(cadata=roots_pem.decode())
    return ctx


# --- peer identity after the handshake --------------------------------------------------------------------------


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> SpiffeId | None:
    """The verified peer's identity: the first parseable SPIFFE URI SAN (as ztunnel takes it)."""
    cert = peer_certificate(ssl_object)
    if cert is None:
        return None
    ids = spiffe_ids_of(cert)
    return ids[0] if ids else None


def _peer_in_trust_domain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str, side: str) -> SpiffeId:
    ident = peer_identity(ssl_object)
    if ident is None:
        raise PeerIdentityError(f"{side} certificate carries no SPIFFE URI SAN")
    if ident.trust_domain != trust_domain:
        raise PeerIdentityError(f"{side} identity {ident} is not in trust domain {trust_domain!r}")
    return ident


def check_client_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str) -> SpiffeId:
    """Server side: the client must present a SPIFFE id in our own trust domain (docs/hbone-spec.md)."""
    return _peer_in_trust_domain(ssl_object, trust_domain, "client")


def check_server_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: Iterable[SpiffeId | str]) -> SpiffeId:
    """Client side: one of the server's URI SANs must be an expected identity. An empty `expected` is refused
    (it used to accept any certificate the mesh CA signed, so any workload could pose as the server)."""
    want = {str(e) for e in expected}
    if not want:
        raise PeerIdentityError(
            "no expected server identity configured: set the server's SPIFFE id (e.g. --expect-identity)"
        )
    cert = peer_certificate(ssl_object)
    if cert is None:
        raise PeerIdentityError("server presented no certificate")
    have = spiffe_ids_of(cert)
    if not have:
        raise PeerIdentityError("server certificate carries no SPIFFE URI SAN")
    for ident in have:
        if str(ident) in want:
            return ident
    raise PeerIdentityError(
        f"server identity {', '.join(map(str, have))} is not one of the expected {', '.join(sorted(want))}"
    )


def check_server_in_trust_domain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str) -> SpiffeId:
    """Client side, when the caller named no server identity: the server must be in our own trust domain."""
    return _peer_in_trust_domain(ssl_object, trust_domain, "server")


class MeshTls:
    """TLS contexts that follow certificate rotation.

    The server context handed to a listener stays the same object; an SNI callback (which OpenSSL calls for every
    ClientHello, with or without SNI) switches each new handshake to the context built from the current
    certificate. Client contexts are rebuilt on rotation and taken fresh per dial.
    """

    def __init__(self, manager: IdentityManager, options: TlsOptions = TlsOptions()) -> None:
        self.manager = manager
        self.options = options
        self._server = server_context(manager.current, options)
        self._client = client_context(manager.current, options=options)
        self.front = server_context(manager.current, options)
        self.front.sni_callback = self._pick_server_context
        manager.on_rotate(self._rebuild)

    @property
    def trust_domain(self) -> str:
        ident = self.manager.identity
        if ident is None:
            raise PeerIdentityError("our own certificate carries no SPIFFE URI SAN")
        return ident.trust_domain

    def _pick_server_context(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if sslobj.context is not self._server:
            sslobj.context = self._server

    def _rebuild(self, bundle: CertifiedKey) -> None:
        self._server = server_context(bundle, self.options)
        self._client = client_context(bundle, options=self.options)

    def server_context(self) -> ssl.SSLContext:
        return self.front

    def client_context(self) -> ssl.SSLContext:
        return self._client
