"""Workload identities: SPIFFE ids, the dev mesh CA, certificate bundles and rotation."""

from hbone.identity.bundle import ISTIO, SPIFFE, load_bundle, load_ca, write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority, CertifiedKey, build_csr, identity_of
from hbone.identity.manager import FileSource, IdentityManager, LocalCASource
from hbone.identity.spiffe import SpiffeId

__all__ = [
    "ISTIO",
    "SPIFFE",
    "CertificateAuthority",
    "CertifiedKey",
    "FileSource",
    "IdentityManager",
    "LocalCASource",
    "SpiffeId",
    "build_csr",
    "identity_of",
    "load_bundle",
    "load_ca",
    "write_bundle",
    "write_ca",
]
