"""SPIFFE ids, the dev CA, CSRs, bundle layouts and rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import CertificateError, IdentityError
from hbone.identity import (
    SPIFFE,
    CertificateAuthority,
    FileSource,
    IdentityManager,
    LocalCASource,
    SpiffeId,
    build_csr,
    identity_of,
    load_bundle,
    load_ca,
    write_bundle,
    write_ca,
)
from hbone.identity.certs import csr_to_pem, generate_key
from hbone.testing import TestCA

# --- SPIFFE ids ---------------------------------------------------------------------------------------------------


def test_istio_identity_parts() -> None:
    s = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bookinfo-productpage")
    assert (s.trust_domain, s.namespace, s.service_account) == ("cluster.local", "default", "bookinfo-productpage")
    assert s.is_istio
    assert s.principal == "cluster.local/ns/default/sa/bookinfo-productpage"
    assert str(s) == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    assert SpiffeId.istio("td", "a", "b") == SpiffeId.parse("spiffe://td/ns/a/sa/b")


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://example.org",
        "spiffe://example.org/workload",
        "spiffe://example.org/ns/a/sa/b/extra",
        "spiffe://example.org/ns/a/xx/b",
        "spiffe://example.org/sa/b/ns/a",
    ],
)
def test_opaque_identities_never_have_namespace(text: str) -> None:
    s = SpiffeId.parse(text)
    assert not s.is_istio
    assert s.namespace is None and s.service_account is None
    assert str(s) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://cluster.local/ns/a/sa/b", "must start with"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "lowercase"),
        ("spiffe://", "empty trust domain"),
        ("spiffe:///ns/a/sa/b", "empty trust domain"),
        ("spiffe://Cluster.local/ns/a", "trust domain"),
        ("spiffe://cluster.local:8080/ns/a", "port"),
        ("spiffe://user@cluster.local/ns/a", "user info"),
        ("spiffe://cluster.local/", "end with '/'"),
        ("spiffe://cluster.local/ns//sa/b", "empty path segment"),
        ("spiffe://cluster.local/ns/../sa/b", "relative"),
        ("spiffe://cluster.local/ns/a b/sa/b", "path segment"),
        ("spiffe://cluster.local/ns/a?x=1", "query"),
        ("spiffe://cluster.local/ns/a#frag", "fragment"),
        ("spiffe://cluster.local/" + "a" * 2100, "maximum"),
    ],
)
def test_invalid_ids_are_rejected_precisely(text: str, why: str) -> None:
    with pytest.raises(IdentityError, match=why):
        SpiffeId.parse(text)


def test_parse_istio_rejects_opaque() -> None:
    with pytest.raises(IdentityError, match="not an Istio identity"):
        SpiffeId.parse_istio("spiffe://td/workload")


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_identity_error(text: str) -> None:
    try:
        s = SpiffeId.parse(text)
    except IdentityError:
        return
    assert SpiffeId.parse(str(s)) == s


_seg = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).filter(
    lambda x: x not in (".", "..")
)


@given(_seg, _seg, _seg)
def test_istio_round_trip(td: str, ns: str, sa: str) -> None:
    s = SpiffeId.istio(td, ns, sa)
    assert SpiffeId.parse(str(s)) == s
    assert (s.namespace, s.service_account) == (ns, sa)


# --- dev CA -------------------------------------------------------------------------------------------------------


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.mark.parametrize("intermediate", [False, True])
def test_issue_workload_certificate(intermediate: bool) -> None:
    ca = TestCA(intermediate=intermediate)
    ck = ca.issue("ns1", "alice", dns=("alice.local",), ips=("127.0.0.1",))
    leaf = ck.leaf
    assert identity_of(leaf) == SpiffeId.parse("spiffe://cluster.local/ns/ns1/sa/alice")
    assert _eku(leaf) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # empty subject needs a critical SAN
    assert san.value.get_values_for_type(x509.DNSName) == ["alice.local"]
    assert len(ck.chain) == (3 if intermediate else 2)
    assert ck.chain[-1] == ca.root.cert and ck.roots == (ca.root.cert,)
    # every link is signed by the next one
    for child, parent in zip(ck.chain, ck.chain[1:], strict=False):
        child.verify_directly_issued_by(parent)
    ck.check_valid()


def test_refresh_at_half_life() -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ck = TestCA().issue(ttl=dt.timedelta(hours=10), not_before=start)
    assert ck.refresh_at() == start + dt.timedelta(hours=5)


def test_csr_as_istiod_expects() -> None:
    key = generate_key()
    sid = SpiffeId.istio("cluster.local", "ns", "sa")
    csr = build_csr(key, sid)
    assert csr.subject == x509.Name([])
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(sid)]
    assert csr.is_signature_valid
    assert csr_to_pem(csr).startswith(b"-----BEGIN CERTIFICATE REQUEST-----")


def test_sign_csr_uses_given_identity_not_csr_sans() -> None:
    ca = CertificateAuthority.create_root()
    key = generate_key()
    csr = build_csr(key, SpiffeId.istio("cluster.local", "evil", "admin"))
    chain = ca.sign_csr(csr, SpiffeId.istio("cluster.local", "ns", "caller"))
    assert str(identity_of(chain[0])) == "spiffe://cluster.local/ns/ns/sa/caller"


# --- bundles ------------------------------------------------------------------------------------------------------


def test_istio_layout_round_trip(tmp_path: Path) -> None:
    ca = TestCA(intermediate=True)
    ck = ca.issue("ns", "bob")
    write_bundle(tmp_path, ck)
    assert stat.S_IMODE(os.stat(tmp_path / "key.pem").st_mode) == 0o600
    loaded = load_bundle(tmp_path)
    assert loaded.leaf == ck.leaf
    assert loaded.roots == (ca.root.cert,)
    assert loaded.identity == ck.identity


def test_spiffe_layout(tmp_path: Path) -> None:
    ck = TestCA().issue("ns", "carol")
    write_bundle(tmp_path, ck, SPIFFE)
    assert (tmp_path / "certificates.pem").exists()
    assert load_bundle(tmp_path).identity == ck.identity


def test_trust_anchor_from_end_of_chain(tmp_path: Path) -> None:
    ca = TestCA()
    ck = ca.issue()
    # istiod's shape: the root comes last in the chain and there is no root file
    (tmp_path / "cert-chain.pem").write_bytes(ck.chain_pem() + ck.roots_pem())
    (tmp_path / "key.pem").write_bytes(ck.key_pem())
    loaded = load_bundle(tmp_path)
    assert loaded.roots == (ca.root.cert,)


def test_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no certificate bundle found"):
        load_bundle(tmp_path)
    ca = TestCA()
    write_bundle(tmp_path, ca.issue())
    (tmp_path / "key.pem").write_bytes(ca.issue().key_pem())
    with pytest.raises(CertificateError, match="does not match"):
        load_bundle(tmp_path)
    (tmp_path / "key.pem").unlink()
    with pytest.raises(CertificateError, match=r"key\.pem: file not found"):
        load_bundle(tmp_path)
    (tmp_path / "key.pem").write_bytes(b"garbage")
    with pytest.raises(CertificateError, match="not a valid unencrypted PEM private key"):
        load_bundle(tmp_path)


def test_expired_and_not_yet_valid(tmp_path: Path) -> None:
    ca = TestCA()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    write_bundle(tmp_path, ca.issue(not_before=past, ttl=dt.timedelta(days=1)))
    with pytest.raises(CertificateError, match="expired"):
        load_bundle(tmp_path)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    write_bundle(tmp_path, ca.issue(not_before=future))
    with pytest.raises(CertificateError, match="not valid before"):
        load_bundle(tmp_path)


def test_ca_dir_round_trip(tmp_path: Path) -> None:
    root = CertificateAuthority.create_root("example.org")
    inter = root.create_intermediate()
    write_ca(tmp_path / "root", root)
    write_ca(tmp_path / "inter", inter)
    assert stat.S_IMODE(os.stat(tmp_path / "root" / "ca-key.pem").st_mode) == 0o600
    r2 = load_ca(tmp_path / "root")
    i2 = load_ca(tmp_path / "inter")
    assert r2.cert == root.cert and r2.trust_domain == "example.org"
    assert i2.root == root.cert
    ck = i2.issue(SpiffeId.istio("example.org", "a", "b"))
    assert ck.chain[-1] == root.cert


# --- rotation -----------------------------------------------------------------------------------------------------


class _Clock:
    """A settable clock: certificate times have one-second resolution, so real short TTLs would make tests slow."""

    def __init__(self) -> None:
        self.t = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.t


async def test_manager_rotates_at_half_life_and_notifies() -> None:
    ca = TestCA()
    clock = _Clock()
    m = IdentityManager(LocalCASource(ca.signer, ca.spiffe("ns", "rot"), ttl=dt.timedelta(hours=2)), clock=clock)
    rotated: asyncio.Queue[object] = asyncio.Queue()
    m.on_rotate(rotated.put_nowait)
    first = await m.start()
    assert await asyncio.wait_for(rotated.get(), 5) is first
    clock.t = first.refresh_at() - dt.timedelta(seconds=1)
    m.refresh_now()  # wakes the loop: not yet due, so it goes back to sleep
    assert rotated.empty() and m.current is first
    clock.t = first.refresh_at() + dt.timedelta(seconds=1)
    m.refresh_now()
    second = await asyncio.wait_for(rotated.get(), 5)
    assert second is m.current and second is not first
    assert m.rotations == 2
    await m.stop()


async def test_manager_keeps_old_cert_on_failure() -> None:
    ca = TestCA()
    clock = _Clock()
    calls = 0
    failed = asyncio.Event()

    class Flaky:
        async def fetch(self):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 1:
                return ca.issue("a", "b", ttl=dt.timedelta(hours=1))
            if calls >= 3:  # retried with backoff, not once
                failed.set()
            raise CertificateError("CA unavailable")

    m = IdentityManager(Flaky(), clock=clock, backoff_initial=0.001, backoff_max=0.002)
    first = await m.start()
    clock.t = first.refresh_at() + dt.timedelta(seconds=1)
    m.refresh_now()
    await asyncio.wait_for(failed.wait(), 5)
    assert m.current is first
    assert m.last_error == "CA unavailable"
    await m.stop()


async def test_file_source_picks_up_replaced_files(tmp_path: Path) -> None:
    ca = TestCA()
    write_bundle(tmp_path, ca.issue("ns", "one"))
    m = IdentityManager(FileSource(tmp_path), file_poll_interval=0.02)
    rotated: asyncio.Queue[object] = asyncio.Queue()
    await m.start()
    m.on_rotate(rotated.put_nowait)
    new = ca.issue("ns", "two")
    write_bundle(tmp_path, new)
    got = await asyncio.wait_for(rotated.get(), 5)
    assert got is m.current and m.identity == new.identity
    await m.stop()
