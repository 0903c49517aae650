"""Certificates: the dev mesh CA, workload certificates, CSRs and certificate bundles.

Everything is ECDSA P-256 with SHA-256, as istiod and ztunnel use. Workload certificates carry the SPIFFE id as a
URI SAN and both serverAuth and clientAuth EKUs, because the same certificate serves inbound (server) and outbound
(client) HBONE (docs/hbone-spec.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hbone.errors import CertificateError, IdentityError
from hbone.identity.spiffe import SpiffeId

PrivateKey = ec.EllipticCurvePrivateKey
DEFAULT_WORKLOAD_TTL = dt.timedelta(hours=24)
DEFAULT_ROOT_TTL = dt.timedelta(days=3650)
# Tolerate small clock differences between machines when stamping not_before.
_BACKDATE = dt.timedelta(minutes=5)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _validity(ttl: dt.timedelta, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """(not_before, not_after) of a certificate issued now whose lifetime is `ttl`.

    not_before is backdated for clock skew, but by at most a quarter of the TTL: a full 5 minutes on a
    short-lived certificate would put its half-life (when rotation starts) in the past, so it would be
    renewed again at once, forever.
    """
    start = not_before if not_before is not None else now() - min(_BACKDATE, ttl / 4)
    return start, start + ttl


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_pem_certs(data: bytes, *, source: str = "PEM data") -> list[x509.Certificate]:
    """All certificates in a PEM blob, in order. Raises when there are none."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{source}: not a valid PEM certificate list ({e})") from e
    if not certs:
        raise CertificateError(f"{source}: contains no certificate")
    return certs


def load_pem_key(data: bytes, *, source: str = "PEM data") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"{source}: not a valid unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{source}: expected an EC private key, got {type(key).__name__}")
    return key


def spiffe_ids_of(cert: x509.Certificate) -> list[SpiffeId]:
    """The parseable SPIFFE URI SANs of a certificate, in certificate order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[SpiffeId] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            out.append(SpiffeId.parse(uri))
        except IdentityError:
            continue
    return out


def identity_of(cert: x509.Certificate) -> SpiffeId | None:
    """The peer identity as ztunnel takes it: the first parseable SPIFFE URI SAN."""
    ids = spiffe_ids_of(cert)
    return ids[0] if ids else None


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _san(spiffe: SpiffeId | None, dns: Iterable[str], ips: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    if spiffe is not None:
        names.append(x509.UniformResourceIdentifier(str(spiffe)))
    names.extend(x509.DNSName(d) for d in dns)
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as e:
            raise IdentityError(f"invalid IP SAN {ip!r}: {e}") from e
    return names


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its chain `[leaf, intermediates..., root]` and the trust anchors to verify peers with."""

    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @functools.cached_property
    def identity(self) -> SpiffeId | None:
        # Parsed once per certificate: the inbound handler asks for it on every tunnel, and parsing the SAN with
        # cryptography (~6 us) was ~4% of `hbone serve`'s CPU per tunnel. A rotated certificate is a new object.
        return identity_of(self.leaf)

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def refresh_at(self) -> dt.datetime:
        """Half-life of the leaf, when istio/ztunnel rotate (docs/istio.md §3)."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def chain_pem(self) -> bytes:
        """Leaf and intermediates, as presented on the wire (roots are not sent)."""
        return b"".join(cert_to_pem(c) for c in self.chain if c not in self.roots) or cert_to_pem(self.leaf)

    def roots_pem(self) -> bytes:
        return b"".join(cert_to_pem(c) for c in self.roots)

    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    def check_valid(self, at: dt.datetime | None = None) -> None:
        """Raise CertificateError if the leaf is expired or not yet valid, or the key does not match it."""
        t = at or now()
        if t < self.not_before:
            raise CertificateError(f"certificate is not valid before {self.not_before.isoformat()}")
        if t >= self.not_after:
            raise CertificateError(f"certificate expired at {self.not_after.isoformat()}")
        pub = self.leaf.public_key()
        if (
            not isinstance(pub, ec.EllipticCurvePublicKey)
            or pub.public_numbers() != self.key.public_key().public_numbers()
        ):
            raise CertificateError("private key does not match the leaf certificate")


class CertificateAuthority:
    """A signing CA: the dev mesh root, or an intermediate below it."""

    def __init__(self, key: PrivateKey, cert: x509.Certificate, parents: Sequence[x509.Certificate] = ()) -> None:
        self.key = key
        self.cert = cert
        # parents: intermediates above this CA up to and including the root
        self.parents = tuple(parents)

    @property
    def root(self) -> x509.Certificate:
        return self.parents[-1] if self.parents else self.cert

    @property
    def trust_domain(self) -> str | None:
        ids = spiffe_ids_of(self.cert)
        return ids[0].trust_domain if ids else None

    @classmethod
    def create_root(
        cls, trust_domain: str = "cluster.local", *, ttl: dt.timedelta = DEFAULT_ROOT_TTL, org: str = "hbone dev mesh"
    ) -> CertificateAuthority:
        key = generate_key()
        td = SpiffeId.parse(f"spiffe://{trust_domain}")
        name = _name(f"{org} root CA", org)
        start, end = _validity(ttl, None)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName(_san(td, (), ())), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def create_intermediate(
        self, *, ttl: dt.timedelta = DEFAULT_ROOT_TTL / 2, name: str = "intermediate CA"
    ) -> CertificateAuthority:
        key = generate_key()
        start, end = _validity(ttl, None)
        td = self.trust_domain
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name, "hbone dev mesh"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(min(end, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if td:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san(SpiffeId.parse(f"spiffe://{td}"), (), ())), critical=False
            )
        return CertificateAuthority(key, builder.sign(self.key, hashes.SHA256()), (self.cert, *self.parents))

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        spiffe: SpiffeId,
        *,
        ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        not_before: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ...]:
        """Sign a workload certificate; returns the chain `[leaf, intermediates..., root]`."""
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise IdentityError("workload keys must be ECDSA")
        start, end = _validity(ttl, not_before)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            # An empty subject requires a critical SAN (RFC 5280 §4.2.1.6).
            .add_extension(x509.SubjectAlternativeName(_san(spiffe, dns, ips)), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return (leaf, self.cert, *self.parents)

    def issue(
        self,
        spiffe: SpiffeId,
        *,
        ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        not_before: dt.datetime | None = None,
    ) -> CertifiedKey:
        """Generate a key and a workload certificate for `spiffe`."""
        key = generate_key()
        chain = self.sign(key.public_key(), spiffe, ttl=ttl, dns=dns, ips=ips, not_before=not_before)
        return CertifiedKey(key, chain, (self.root,))

    def sign_csr(
        self, csr: x509.CertificateSigningRequest, spiffe: SpiffeId, *, ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL
    ) -> tuple[x509.Certificate, ...]:
        """Sign a CSR for `spiffe` — the identity the caller authenticated as, never the CSR's own SANs."""
        if not csr.is_signature_valid:
            raise IdentityError("CSR signature is invalid")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise IdentityError(f"CSR key must be ECDSA, got {type(pub).__name__}")
        return self.sign(pub, spiffe, ttl=ttl)


def build_csr(key: PrivateKey, spiffe: SpiffeId) -> x509.CertificateSigningRequest:
    """A CSR as istiod expects it: empty subject, one critical URI SAN, P-256, SHA-256 (docs/istio.md §3)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe))]), critical=True)
        .sign(key, hashes.SHA256())
    )


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)
