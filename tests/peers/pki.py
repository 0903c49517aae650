"""Test PKI: a root CA and Istio-style workload certificates (until the project's dev CA in hbone.identity is
ready)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.peers.process import LOOPBACK

TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class TestIdentity:
    """Istio-style files for one workload: cert-chain.pem, key.pem, root-cert.pem."""

    __test__ = False  # not a pytest test class
    name: str
    spiffe_id: str
    dir: Path

    @property
    def cert_chain(self) -> Path:
        return self.dir / "cert-chain.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"

    @property
    def root_cert(self) -> Path:
        return self.dir / "root-cert.pem"

    def server_context(self, alpn: Sequence[str] = ("h2",), require_client_cert: bool = True) -> ssl.SSLContext:
        """TLS 1.3-only server context; client certificates verified against the test root."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._common(ctx, alpn)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx

    def client_context(self, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """TLS 1.3-only client context presenting this identity. Peers are SPIFFE ids, not host names,
        so the hostname check is off and callers check the peer's URI SAN (see :func:`peer_uri_sans`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        self._common(ctx, alpn)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _common(self, ctx: ssl.SSLContext, alpn: Sequence[str]) -> None:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert_chain, self.key)
        ctx.load_verify_locations(cafile=self.root_cert)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))


@dataclass(frozen=True)
class TestPKI:
    __test__ = False  # not a pytest test class
    root_cert: Path
    root_key: Path
    identities: dict[str, TestIdentity]

    def __getitem__(self, name: str) -> TestIdentity:
        return self.identities[name]


def spiffe_id_for(name: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """``"sa"`` -> ns ``default``; ``"ns/sa"`` -> that namespace; a ``spiffe://`` id is kept as is."""
    if name.startswith("spiffe://"):
        return name
    ns, _, sa = name.rpartition("/")
    return f"spiffe://{trust_domain}/ns/{ns or 'default'}/sa/{sa}"


def _identity_dirname(name: str) -> str:
    if name.startswith("spiffe://"):
        return "".join(c if c.isalnum() or c in "-." else "_" for c in name.removeprefix("spiffe://"))
    ns, _, sa = name.rpartition("/")
    return f"{ns or 'default'}_{sa}"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_test_pki(tmpdir: Path, names: Iterable[str], trust_domain: str = TRUST_DOMAIN) -> TestPKI:
    """A P-256 root CA and one leaf per name (``"sa"``, ``"ns/sa"`` or a full ``spiffe://`` id) under ``tmpdir``.

    Leaves carry URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>`` plus DNS:localhost and IP:127.0.0.1, and both
    serverAuth and clientAuth EKUs, like Istio workload certificates. Files per identity go to
    ``tmpdir/<ns>_<sa>/{cert-chain,key,root-cert}.pem`` (a sanitised id for ``spiffe://`` names).
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                         x509.NameAttribute(NameOID.COMMON_NAME, "hbone test root")])  # fmt: skip
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    root_cert = tmpdir / "root-cert.pem"
    root_key = tmpdir / "root-key.pem"
    root_cert.write_bytes(_pem(ca_cert))
    root_key.write_bytes(_key_pem(ca_key))

    identities: dict[str, TestIdentity] = {}
    for name in names:
        spiffe = spiffe_id_for(name, trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # Istio leaves have an empty subject; identity is the URI SAN
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                    ]
                ),
                critical=True,  # required when the subject is empty (RFC 5280 §4.2.1.6)
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )  # digitalSignature, keyEncipherment
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ident = TestIdentity(name=name, spiffe_id=spiffe, dir=tmpdir / _identity_dirname(name))
        ident.dir.mkdir(parents=True, exist_ok=True)
        ident.cert_chain.write_bytes(_pem(cert))
        ident.key.write_bytes(_key_pem(key))
        ident.key.chmod(0o600)
        ident.root_cert.write_bytes(_pem(ca_cert))
        identities[name] = ident
    return TestPKI(root_cert=root_cert, root_key=root_key, identities=identities)


def peer_uri_sans(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[str]:
    """URI SANs of the verified peer certificate (empty when there is none)."""
    if ssl_object is None:
        return []
    cert = ssl_object.getpeercert()
    if not cert:
        return []
    return [str(entry[1]) for entry in cert.get("subjectAltName", ()) if entry[0] == "URI"]
