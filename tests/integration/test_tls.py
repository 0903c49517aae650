"""mTLS handshakes on loopback between issued identities, and the refusals the mesh depends on."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.errors import PeerIdentityError
from hbone.identity import CertifiedKey, IdentityManager, write_bundle
from hbone.identity.spiffe import SpiffeId
from hbone.testing import TestCA
from hbone.tls import MeshTls, TlsOptions, check_client_peer, check_server_peer, client_context, server_context

pytestmark = pytest.mark.timeout(30)


class Server:
    """A TLS server that reports the verified client identity back and records what it saw."""

    def __init__(self, bundle: CertifiedKey, ctx: ssl.SSLContext | None = None) -> None:
        self.bundle = bundle
        self.ctx = ctx or server_context(bundle)
        self.accepted: list[SpiffeId] = []
        self.rejected: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ident = check_client_peer(writer.get_extra_info("ssl_object"), self.bundle.identity.trust_domain)  # type: ignore[union-attr]
            self.accepted.append(ident)
            writer.write(str(ident).encode() + b"\n")
            await writer.drain()
            # Consume what the client sent (or its close): closing with unread bytes would send an RST
            # that can discard our answer before the client reads it.
            with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
                await asyncio.wait_for(reader.readline(), 5)
        except PeerIdentityError as e:
            self.rejected.append(str(e))
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(srv: Server) -> AsyncIterator[Server]:
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=srv.ctx)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        await server.wait_closed()


async def dial(port: int, ctx: ssl.SSLContext, expected: list[SpiffeId]) -> tuple[SpiffeId, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
    try:
        sslobj = writer.get_extra_info("ssl_object")
        assert sslobj.version() == "TLSv1.3"
        assert sslobj.selected_alpn_protocol() == "h2"
        server_id = check_server_peer(sslobj, expected)
        return server_id, await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA(intermediate=True)


async def test_handshake_between_two_identities(ca: TestCA) -> None:
    bob, alice = ca.issue("ns", "bob"), ca.issue("ns", "alice")
    async with serving(Server(bob)) as srv:
        server_id, line = await dial(srv.port, client_context(alice), [bob.identity])  # type: ignore[list-item]
    assert server_id == bob.identity
    assert line.decode().strip() == str(alice.identity)
    assert srv.accepted == [alice.identity]


async def _refused(srv: Server, ctx: ssl.SSLContext, expected: list[SpiffeId]) -> None:
    """The client either fails the handshake, or the server drops it without answering."""
    async with serving(srv):
        try:
            _, line = await dial(srv.port, ctx, expected)
        except (ssl.SSLError, ConnectionError, PeerIdentityError, asyncio.IncompleteReadError):
            return
        assert line == b"", f"server answered {line!r} although it should have refused"


async def test_client_without_certificate_is_refused(ca: TestCA) -> None:
    bob = ca.issue("ns", "bob")
    srv = Server(bob)
    await _refused(srv, client_context(None, roots_pem=bob.roots_pem()), [bob.identity])  # type: ignore[list-item]
    assert srv.accepted == []


async def test_certificate_from_another_root_is_refused(ca: TestCA) -> None:
    bob = ca.issue("ns", "bob")
    stranger = TestCA().issue("ns", "alice")
    ctx = client_context(stranger, roots_pem=bob.roots_pem())  # trusts bob, but bob does not trust it
    srv = Server(bob)
    await _refused(srv, ctx, [bob.identity])  # type: ignore[list-item]
    assert srv.accepted == []


async def test_same_root_other_trust_domain_is_refused(ca: TestCA) -> None:
    bob = ca.issue("ns", "bob")
    other_td = ca.signer.issue(SpiffeId.istio("other.domain", "ns", "alice"))
    srv = Server(bob)
    await _refused(srv, client_context(other_td), [bob.identity])  # type: ignore[list-item]
    assert srv.accepted == []
    assert srv.rejected and "not in trust domain 'cluster.local'" in srv.rejected[0]


async def test_expired_client_certificate_is_refused(ca: TestCA) -> None:
    bob = ca.issue("ns", "bob")
    old = ca.issue("ns", "alice", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), ttl=dt.timedelta(days=1))
    srv = Server(bob)
    await _refused(srv, client_context(old), [bob.identity])  # type: ignore[list-item]
    assert srv.accepted == []


async def test_expired_server_certificate_is_refused(ca: TestCA) -> None:
    old = ca.issue("ns", "bob", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), ttl=dt.timedelta(days=1))
    alice = ca.issue("ns", "alice")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        async with serving(Server(old)) as srv:
            await dial(srv.port, client_context(alice), [old.identity])  # type: ignore[list-item]


async def test_server_with_unexpected_san_is_refused(ca: TestCA) -> None:
    mallory, alice = ca.issue("ns", "mallory"), ca.issue("ns", "alice")
    async with serving(Server(mallory)) as srv:
        with pytest.raises(PeerIdentityError, match="not one of the expected"):
            await dial(srv.port, client_context(alice), [ca.spiffe("ns", "bob")])


async def test_tls12_only_when_opted_in(ca: TestCA) -> None:
    bob, alice = ca.issue("ns", "bob"), ca.issue("ns", "alice")
    ctx = client_context(alice)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    await _refused(Server(bob), ctx, [bob.identity])  # type: ignore[list-item]
    srv = Server(bob, server_context(bob, TlsOptions(allow_tls12=True)))
    async with serving(srv):
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx, server_hostname="")
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        assert await reader.readline() == str(alice.identity).encode() + b"\n"
        writer.close()


async def test_rotation_new_connections_get_new_cert_old_ones_keep_working(ca: TestCA) -> None:
    bob1, alice = ca.issue("ns", "bob"), ca.issue("ns", "alice")
    manager = IdentityManager.fixed(bob1)
    mesh = MeshTls(manager)
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=mesh.server_context())
    port = server.sockets[0].getsockname()[1]
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(alice), server_hostname="")
        serial1 = w1.get_extra_info("ssl_object").getpeercert(binary_form=True)
        bob2 = ca.issue("ns", "bob")
        await manager._install(bob2)  # what the rotation loop does
        r2, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(alice), server_hostname="")
        serial2 = w2.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert serial1 != serial2
        assert serial2 == bob2.leaf.public_bytes(
            __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER
        )
        for r, w in ((r1, w1), (r2, w2)):
            w.write(b"ping\n")
            assert await r.readline() == b"ping\n"
            w.close()
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


# --- openssl s_client, a real third-party peer ---------------------------------------------------------------------


def _s_client(port: int, tmp: Path, cert_dir: Path | None) -> subprocess.CompletedProcess[str]:
    args = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-alpn",
        "h2",
        "-noservername",
        "-ign_eof",
        "-CAfile",
        str(tmp / "root-cert.pem"),
    ]
    if cert_dir is not None:
        # -cert sends only the leaf; -cert_chain adds the intermediates the server needs to reach the root.
        chain = str(cert_dir / "cert-chain.pem")
        args += ["-cert", chain, "-cert_chain", chain, "-key", str(cert_dir / "key.pem")]
    # Send a line and then wait for the server's answer or close.
    return subprocess.run(args, input="hello\n", capture_output=True, text=True, timeout=20, check=False)


@pytest.mark.interop
async def test_openssl_s_client_sees_tls13_alpn_h2_and_needs_a_certificate(ca: TestCA, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (the test command installs it)")
    bob, alice = ca.issue("ns", "bob"), ca.issue("ns", "alice")
    write_bundle(tmp_path, alice)
    async with serving(Server(bob)) as srv:
        ok = await asyncio.to_thread(_s_client, srv.port, tmp_path, tmp_path)
        bare = await asyncio.to_thread(_s_client, srv.port, tmp_path, None)
    assert "Protocol  : TLSv1.3" in ok.stdout or "TLSv1.3" in ok.stdout, ok.stdout
    assert "ALPN protocol: h2" in ok.stdout, ok.stdout
    assert "Verify return code: 0 (ok)" in ok.stdout, ok.stdout
    assert str(alice.identity) in ok.stdout
    assert srv.accepted == [alice.identity]
    # Without a client certificate the server aborts: a "certificate required" alert (TLS 1.3), or, when the
    # close wins the race with the alert, a reset or a bare EOF. Either way no application byte reaches the client.
    out = bare.stdout + bare.stderr
    assert str(alice.identity) not in bare.stdout
    refusals = ("certificate required", "errno=104", "unexpected eof while reading")
    assert any(r in out for r in refusals), out
    assert srv.accepted == [alice.identity]
