"""Loading and writing certificate bundles in the well-known on-disk layouts.

Layouts, tried in this order when a directory is given:
- Istio:  `cert-chain.pem`, `key.pem`, `root-cert.pem` (`./etc/certs`)
- SPIFFE workload credentials: `certificates.pem`, `private_key.pem`, `ca_certificates.pem`
  (`/var/run/secrets/workload-spiffe-credentials`)
An explicit layout names the three files directly.

Trust anchors are the last element(s) of the chain plus the root file's certificates (istiod's CA returns the
roots as the last chain element; docs/hbone-spec.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hbone.errors import CertificateError
from hbone.identity.certs import (
    CertificateAuthority,
    CertifiedKey,
    cert_to_pem,
    key_to_pem,
    load_pem_certs,
    load_pem_key,
)


@dataclass(frozen=True)
class Layout:
    chain: str
    key: str
    roots: str


ISTIO = Layout("cert-chain.pem", "key.pem", "root-cert.pem")
SPIFFE = Layout("certificates.pem", "private_key.pem", "ca_certificates.pem")
LAYOUTS = (ISTIO, SPIFFE)
ISTIO_DEFAULT_DIR = Path("./etc/certs")
SPIFFE_DEFAULT_DIR = Path("/var/run/secrets/workload-spiffe-credentials")


def detect_layout(directory: Path) -> Layout:
    for layout in LAYOUTS:
        if (directory / layout.chain).exists() or (directory / layout.key).exists():
            return layout
    names = ", ".join(f"{lay.chain}/{lay.key}/{lay.roots}" for lay in LAYOUTS)
    raise CertificateError(f"{directory}: no certificate bundle found (looked for {names})")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CertificateError(f"{path}: file not found") from e
    except OSError as e:
        raise CertificateError(f"{path}: cannot read ({e.strerror})") from e


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def load_bundle(directory: str | os.PathLike[str], layout: Layout | None = None, *, check: bool = True) -> CertifiedKey:
    """Load a key, chain and roots from `directory`; validate that they fit together and are in date."""
    d = Path(directory)
    if not d.is_dir():
        raise CertificateError(f"{d}: not a directory")
    lay = layout or detect_layout(d)
    chain = load_pem_certs(_read(d / lay.chain), source=str(d / lay.chain))
    key = load_pem_key(_read(d / lay.key), source=str(d / lay.key))
    roots: list[x509.Certificate] = []
    root_file = d / lay.roots
    if root_file.exists():
        roots.extend(load_pem_certs(_read(root_file), source=str(root_file)))
    # Self-signed certificates at the end of the chain are roots too.
    while len(chain) > 1 and _is_self_signed(chain[-1]):
        tail = chain.pop()
        if tail not in roots:
            roots.append(tail)
    if not roots:
        raise CertificateError(f"{d}: no trust anchors (neither {lay.roots} nor a root at the end of {lay.chain})")
    bundle = CertifiedKey(key, (*chain, *roots), tuple(roots))
    if check:
        try:
            bundle.check_valid()
        except CertificateError as e:
            raise CertificateError(f"{d / lay.chain}: {e}") from e
    return bundle


def _write(path: Path, data: bytes, mode: int) -> None:
    # Write then rename so a reader (rotation watcher) never sees half a file; create with the final mode so a
    # key is never briefly world-readable.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_bundle(directory: str | os.PathLike[str], bundle: CertifiedKey, layout: Layout = ISTIO) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / layout.key, bundle.key_pem(), 0o600)
    _write(d / layout.chain, bundle.chain_pem(), 0o644)
    _write(d / layout.roots, bundle.roots_pem(), 0o644)
    return d


# --- CA directory ---------------------------------------------------------------------------------------------
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CA_PARENTS = "ca-parents.pem"  # intermediates above the signing CA, then the root; absent for a root CA
ROOT_CERT = "root-cert.pem"


def write_ca(directory: str | os.PathLike[str], ca: CertificateAuthority) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / CA_KEY, key_to_pem(ca.key), 0o600)
    _write(d / CA_CERT, cert_to_pem(ca.cert), 0o644)
    if ca.parents:
        _write(d / CA_PARENTS, b"".join(cert_to_pem(c) for c in ca.parents), 0o644)
    _write(d / ROOT_CERT, cert_to_pem(ca.root), 0o644)
    return d


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    d = Path(directory)
    cert = load_pem_certs(_read(d / CA_CERT), source=str(d / CA_CERT))[0]
    key = load_pem_key(_read(d / CA_KEY), source=str(d / CA_KEY))
    parents: list[x509.Certificate] = []
    if (d / CA_PARENTS).exists():
        parents = load_pem_certs(_read(d / CA_PARENTS), source=str(d / CA_PARENTS))
    ca = CertificateAuthority(key, cert, parents)
    probe = CertifiedKey(key, (cert,), (ca.root,))
    try:
        probe.check_valid()
    except CertificateError as e:
        raise CertificateError(f"{d / CA_CERT}: {e}") from e
    return ca
