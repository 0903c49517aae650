"""TLS inside an in-memory byte stream: handshake, identity, half-close both ways, large transfers."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from hbone.net.tlsstream import TlsHandshakeError, TlsStream
from hbone.testing import TestCA
from hbone.tls import check_client_peer, check_server_peer, client_context, server_context

pytestmark = pytest.mark.timeout(30)


class Pipe:
    """One direction-pair of an in-memory byte stream with EOF, standing in for an HTTP/2 tunnel stream."""

    def __init__(self, rx: asyncio.Queue[bytes], tx: asyncio.Queue[bytes]) -> None:
        self.rx, self.tx = rx, tx
        self.buf = b""
        self.eof = False

    async def read(self, n: int = -1) -> bytes:
        if not self.buf and not self.eof:
            chunk = await self.rx.get()
            if chunk == b"":
                self.eof = True
            self.buf += chunk
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def write(self, data: bytes) -> None:
        if data:
            self.tx.put_nowait(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self.tx.put_nowait(b"")


def pipes() -> tuple[Pipe, Pipe]:
    a: asyncio.Queue[bytes] = asyncio.Queue()
    b: asyncio.Queue[bytes] = asyncio.Queue()
    return Pipe(a, b), Pipe(b, a)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


async def test_inner_mtls_identities_and_half_close(ca: TestCA) -> None:
    alice, bob = ca.issue("ns", "alice"), ca.issue("ns", "bob")
    c_pipe, s_pipe = pipes()
    client, server = await asyncio.gather(
        TlsStream.client(c_pipe, client_context(alice)), TlsStream.server(s_pipe, server_context(bob))
    )
    assert check_server_peer(client.ssl_object, [bob.identity]) == bob.identity  # type: ignore[list-item]
    assert check_client_peer(server.ssl_object, "cluster.local") == alice.identity
    client.write(b"hello")
    client.write_eof()
    assert await server.read(5) == b"hello"
    assert await server.read() == b""  # close_notify reads as EOF
    # the other direction still works after the client's half-close
    server.write(b"world")
    server.write_eof()
    got = b""
    while chunk := await client.read():
        got += chunk
    assert got == b"world"


async def test_large_transfer_intact(ca: TestCA) -> None:
    c_pipe, s_pipe = pipes()
    client, server = await asyncio.gather(
        TlsStream.client(c_pipe, client_context(ca.issue("ns", "a"))),
        TlsStream.server(s_pipe, server_context(ca.issue("ns", "b"))),
    )
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def send() -> None:
        for i in range(0, len(payload), 100_000):
            client.write(payload[i : i + 100_000])
            await client.drain()
        client.write_eof()

    async def recv() -> bytes:
        h = hashlib.sha256()
        while chunk := await server.read():
            h.update(chunk)
        return h.digest()

    _, digest = await asyncio.gather(send(), recv())
    assert digest == hashlib.sha256(payload).digest()


async def test_handshake_failure_is_a_clear_error(ca: TestCA) -> None:
    c_pipe, s_pipe = pipes()
    stranger = TestCA().issue("ns", "x")
    results = await asyncio.gather(
        TlsStream.client(c_pipe, client_context(stranger)),
        TlsStream.server(s_pipe, server_context(ca.issue("ns", "b"))),
        return_exceptions=True,
    )
    assert isinstance(results[0], TlsHandshakeError)
    assert "self-signed certificate in certificate chain" in str(results[0])


async def test_carrier_closed_during_handshake(ca: TestCA) -> None:
    c_pipe, s_pipe = pipes()
    s_pipe.write_eof()
    with pytest.raises(TlsHandshakeError, match="carrier stream ended"):
        await TlsStream.client(c_pipe, client_context(ca.issue("ns", "a")))
