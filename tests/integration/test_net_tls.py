"""hbone.net over TLS 1.3 with ALPN h2 and a throwaway self-signed certificate (not the project's dev CA)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hbone.errors import ConnectionLost, ProtocolError
from hbone.net.endpoints import connect, serve
from hbone.net.stream import Stream

pytestmark = pytest.mark.timeout(60)
CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:8080")]


def self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hbone-net-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.UniformResourceIdentifier("spiffe://test.local/ns/default/sa/net"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def contexts(tmp: Path, client_alpn: list[str] | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext, bytes]:
    cert, key, der = self_signed(tmp)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(cert, key)
    server.load_verify_locations(cert)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as HBONE
    server.set_alpn_protocols(["h2"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_cert_chain(cert, key)
    client.load_verify_locations(cert)
    client.set_alpn_protocols(client_alpn or ["h2"])
    return server, client, der


async def test_tls_echo_bulk_and_peer_identity(tmp_path: Path) -> None:
    server_ctx, client_ctx, der = contexts(tmp_path)
    peer_certs: list[bytes | None] = []

    async def sink(stream: Stream) -> None:
        peer_certs.append(stream.connection.peer_cert)
        stream.send_headers([(":status", "200")])
        digest = hashlib.sha256()
        while data := await stream.read():
            digest.update(data)
        await stream.send(digest.hexdigest().encode())
        stream.write_eof()

    server = await serve(sink, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await connect("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        assert conn.ssl_object is not None
        assert conn.ssl_object.selected_alpn_protocol() == "h2"
        assert conn.ssl_object.version() == "TLSv1.3"
        assert conn.peer_cert == der
        block = bytes(range(256)) * 4096  # 1 MiB
        count = 64
        stream = await conn.open_stream(CONNECT)
        started = time.perf_counter()
        for _ in range(count):
            await stream.send(block)
        stream.write_eof()
        reply = await asyncio.wait_for(stream.read(), 30)
        elapsed = time.perf_counter() - started
        assert reply == hashlib.sha256(block * count).hexdigest().encode()
        assert await asyncio.wait_for(stream.read(), 5) == b""
        assert peer_certs == [der]
        print(f"\nTLS one stream 64 MiB: {count / elapsed:.0f} MiB/s")
        await conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_without_h2_alpn_is_refused(tmp_path: Path) -> None:
    server_ctx, client_ctx, _ = contexts(tmp_path, client_alpn=["http/1.1"])

    async def never(stream: Stream) -> None:
        raise AssertionError("no stream expected")

    server = await serve(never, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((ProtocolError, ConnectionLost)):
            await connect("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    finally:
        server.close()
        await server.wait_closed()


def test_uvloop_h2c_and_tls(tmp_path: Path) -> None:
    """uvloop transports are not asyncio.Transport subclasses and take a different TLS path: run both."""
    uvloop = pytest.importorskip("uvloop")
    server_ctx, client_ctx, der = contexts(tmp_path)

    async def echo(stream: Stream) -> None:
        stream.send_headers([(":status", "200")])
        while data := await stream.read():
            await stream.send(data)
        stream.write_eof()

    async def scenario() -> None:
        for server_ssl, client_ssl in ((None, None), (server_ctx, client_ctx)):
            server = await serve(echo, "127.0.0.1", 0, ssl=server_ssl)
            port = server.sockets[0].getsockname()[1]
            try:
                hostname = "localhost" if client_ssl else None
                conn = await connect("127.0.0.1", port, ssl=client_ssl, server_hostname=hostname)
                assert conn.peer_cert == (der if client_ssl else None)
                stream = await conn.open_stream(CONNECT)
                payload = bytes(range(256)) * 8192
                await stream.send(payload)
                stream.write_eof()
                got = b""
                while data := await stream.read():
                    got += data
                assert got == payload
                await conn.close()
            finally:
                server.close()
                await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 30))
