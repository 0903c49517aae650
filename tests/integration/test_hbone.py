"""HBONE tunnels end to end on loopback: client + pool → mTLS HTTP/2 → inbound handler → TCP upstream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hbone.authz.defaults import DefaultMode, default_policies
from hbone.client import Endpoint, HboneClient
from hbone.errors import ConnectRefused, PeerIdentityError, TunnelError
from hbone.identity import IdentityManager
from hbone.identity.spiffe import SpiffeId
from hbone.net.endpoints import connect
from hbone.net.settings import H2Settings
from hbone.proxy.inbound import InboundConfig, InboundHandler, policy_authorizer
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server
from hbone.tls import MeshTls, client_context

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@dataclass
class Node:
    server: HboneServer
    port: int
    h2c_port: int
    tls: MeshTls

    @property
    def identity(self) -> SpiffeId:
        ident = self.tls.manager.identity
        assert ident is not None
        return ident


@contextlib.asynccontextmanager
async def bob_node(
    ca: TestCA, config: InboundConfig | None = None, sa: str = "bob", settings: H2Settings | None = None
) -> AsyncIterator[Node]:
    tls = ca.mesh_tls("ns", sa)
    cfg = config or InboundConfig()
    cfg.tls = tls
    server = HboneServer(tls, InboundHandler(cfg), settings=settings)
    _, port = await server.listen("127.0.0.1", 0)
    _, h2c_port = await server.listen("127.0.0.1", 0, plaintext=True)
    try:
        yield Node(server, port, h2c_port, tls)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def echo() -> AsyncIterator[int]:
    server, port = await start_echo_server()
    try:
        yield port
    finally:
        server.close()


async def round_trip(client: HboneClient, target: str, ep: Endpoint, payload: bytes) -> bytes:
    tunnel = await client.open(target, ep)
    tunnel.write(payload)
    tunnel.write_eof()
    out = b""
    while chunk := await tunnel.read():
        out += chunk
    return out


@pytest.mark.parametrize(("post", "inner"), [(False, False), (True, False), (True, True)])
async def test_alice_to_bob_echo(ca: TestCA, post: bool, inner: bool) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}", identities=[bob.identity], post=post, inner_tls=inner)
        try:
            assert await round_trip(client, f"127.0.0.1:{echo_port}", ep, b"hello bob") == b"hello bob"
            tunnel = await client.open(f"127.0.0.1:{echo_port}", ep)
            assert tunnel.peer_identity == bob.identity
            if inner:
                assert tunnel.inner_identity == bob.identity
            tunnel.write_eof()
            assert await tunnel.read() == b""
        finally:
            await client.close()


async def test_h2c_listener(ca: TestCA) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(None)
        try:
            ep = Endpoint.parse(f"127.0.0.1:{bob.h2c_port}")
            assert await round_trip(client, f"127.0.0.1:{echo_port}", ep, b"plain") == b"plain"
        finally:
            await client.close()


async def test_64mib_each_way_intact(ca: TestCA) -> None:
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        try:
            tunnel = await client.open(f"127.0.0.1:{echo_port}", Endpoint.parse(f"127.0.0.1:{bob.port}"))

            async def send() -> bytes:
                h = hashlib.sha256()
                for _ in range(size // len(block)):
                    tunnel.write(block)
                    h.update(block)
                    await tunnel.drain()
                tunnel.write_eof()
                return h.digest()

            async def recv() -> tuple[int, bytes]:
                h, n = hashlib.sha256(), 0
                while chunk := await tunnel.read():
                    h.update(chunk)
                    n += len(chunk)
                return n, h.digest()

            sent, (n, got) = await asyncio.gather(send(), recv())
            assert n == size and got == sent
        finally:
            await client.close()


async def test_server_first_and_half_close_both_ways(ca: TestCA) -> None:
    """The upstream speaks first, then reads until our FIN, then answers and closes."""

    async def server_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 welcome\n")
        await writer.drain()
        data = await reader.read()  # until the tunnel's END_STREAM arrives as FIN
        writer.write(b"got " + str(len(data)).encode() + b"\n")
        writer.write_eof()
        await writer.drain()
        writer.close()

    up = await asyncio.start_server(server_first, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    async with bob_node(ca) as bob:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        try:
            tunnel = await client.open(f"127.0.0.1:{up_port}", Endpoint.parse(f"127.0.0.1:{bob.port}"))
            assert await tunnel.read() == b"220 welcome\n"
            tunnel.write(b"x" * 1000)
            tunnel.write_eof()
            rest = b""
            while chunk := await tunnel.read():
                rest += chunk
            assert rest == b"got 1000\n"
        finally:
            await client.close()
            up.close()


async def test_1000_concurrent_streams_on_one_pooled_connection(ca: TestCA) -> None:
    async with bob_node(ca, settings=H2Settings.server(max_concurrent_streams=1000)) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"), max_streams=1000)
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}")
        target = f"127.0.0.1:{echo_port}"
        try:
            # all 1000 open at the same time, then every one carries its own payload both ways
            tunnels = await asyncio.gather(*(client.open(target, ep) for _ in range(1000)))
            assert client.pool.dials == 1
            assert client.pool.stats()["streams"] == 1000

            async def exchange(i: int) -> bool:
                t = tunnels[i]
                payload = hashlib.sha256(str(i).encode()).digest() * 64
                t.write(payload)
                t.write_eof()
                got = b""
                while chunk := await t.read():
                    got += chunk
                return got == payload

            assert all(await asyncio.gather(*(exchange(i) for i in range(1000))))
        finally:
            await client.close()

        # with ztunnel's client cap of 100 streams per connection, 300 open tunnels need 3 connections
        small = HboneClient(ca.mesh_tls("ns", "alice"), max_streams=100)
        try:
            held = await asyncio.gather(*(small.open(target, ep) for _ in range(300)))
            assert small.pool.dials == 3
            for t in held:
                t.write(b"z")
                t.write_eof()
            assert [await t.read() for t in held] == [b"z"] * 300
        finally:
            await small.close()


async def test_pool_reuses_one_connection(ca: TestCA) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}")
        try:
            for _ in range(20):
                assert await round_trip(client, f"127.0.0.1:{echo_port}", ep, b"x") == b"x"
            assert client.pool.dials == 1
        finally:
            await client.close()


async def test_unknown_upstream_is_503(ca: TestCA) -> None:
    server, port = await start_echo_server()
    server.close()
    await server.wait_closed()  # nothing listens on `port` now
    async with bob_node(ca) as bob:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        try:
            with pytest.raises(ConnectRefused) as err:
                await client.open(f"127.0.0.1:{port}", Endpoint.parse(f"127.0.0.1:{bob.port}"))
            assert err.value.status == 503
            assert "refused" in err.value.detail.lower()
        finally:
            await client.close()


async def test_self_call_is_503(ca: TestCA) -> None:
    async with bob_node(ca) as bob:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        try:
            with pytest.raises(ConnectRefused) as err:
                await client.open("127.0.0.1:15008", Endpoint.parse(f"127.0.0.1:{bob.port}"))
            assert err.value.status == 503 and "own port" in err.value.detail
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("authority", "why"),
    [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "out of range"),
        ("[::1", "closing"),
        ("bad host:80", "forbidden character"),
    ],
)
async def test_bad_authority_is_400(ca: TestCA, authority: str, why: str) -> None:
    async with bob_node(ca) as bob:
        conn = await connect("127.0.0.1", bob.port, ssl=client_context(ca.issue("ns", "alice")), server_hostname="")
        try:
            stream = await conn.open_stream([(":method", "CONNECT"), (":authority", authority)])
            headers = dict(await stream.response_headers())
            assert headers[b":status"] == b"400"
            body = await stream.read()
            assert why.encode() in body.lower()
        finally:
            await conn.close()


async def test_non_connect_method_is_400(ca: TestCA) -> None:
    async with bob_node(ca) as bob:
        conn = await connect("127.0.0.1", bob.h2c_port)
        try:
            stream = await conn.open_stream(
                [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x:1")], end_stream=True
            )
            headers = dict(await stream.response_headers())
            assert headers[b":status"] == b"400"
        finally:
            await conn.close()


async def test_denied_identity_is_401(ca: TestCA) -> None:
    bob_id = ca.spiffe("ns", "bob")
    cfg = InboundConfig(
        authorize=policy_authorizer(default_policies(DefaultMode.SAME_NAMESPACE, bob_id)), namespace="ns"
    )
    async with bob_node(ca, cfg) as bob, echo() as echo_port:
        same_ns = HboneClient(ca.mesh_tls("ns", "alice"))
        other_ns = HboneClient(ca.mesh_tls("other", "mallory"))
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}")
        try:
            assert await round_trip(same_ns, f"127.0.0.1:{echo_port}", ep, b"ok") == b"ok"
            with pytest.raises(ConnectRefused) as err:
                await other_ns.open(f"127.0.0.1:{echo_port}", ep)
            assert err.value.status == 401
        finally:
            await same_ns.close()
            await other_ns.close()


async def test_wrong_expected_san_is_refused(ca: TestCA) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        try:
            ep = Endpoint.parse(f"127.0.0.1:{bob.port}", identities=[ca.spiffe("ns", "carol")])
            with pytest.raises(PeerIdentityError, match="not one of the expected"):
                await client.open(f"127.0.0.1:{echo_port}", ep)
        finally:
            await client.close()


async def test_wrong_trust_domain_and_foreign_root_are_refused(ca: TestCA) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        other_td = HboneClient(MeshTls(IdentityManager.fixed(ca.signer.issue(SpiffeId.istio("evil.td", "ns", "x")))))
        foreign = HboneClient(TestCA().mesh_tls("ns", "alice"))
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}")
        try:
            # bob's certificate does not chain to the foreign client's root: the client refuses bob
            with pytest.raises(PeerIdentityError, match=r"certificate verify failed|self-signed|unable to get"):
                await foreign.open(f"127.0.0.1:{echo_port}", ep)
            # the other trust domain's handshake completes, then bob drops the connection before any stream
            with pytest.raises(TunnelError):
                await other_td.open(f"127.0.0.1:{echo_port}", ep)
            assert bob.server.rejected_peers == 1
        finally:
            await other_td.close()
            await foreign.close()


async def test_drain_lets_running_tunnels_finish(ca: TestCA) -> None:
    async with bob_node(ca) as bob, echo() as echo_port:
        client = HboneClient(ca.mesh_tls("ns", "alice"))
        ep = Endpoint.parse(f"127.0.0.1:{bob.port}")
        try:
            tunnel = await client.open(f"127.0.0.1:{echo_port}", ep)
            drain = asyncio.create_task(bob.server.drain(deadline=10))
            tunnel.write(b"still here")
            assert await tunnel.read(10) == b"still here"
            tunnel.write_eof()
            assert await tunnel.read() == b""
            await asyncio.wait_for(drain, 10)
            with pytest.raises(TunnelError):  # the listener is gone and the connection got GOAWAY
                await client.open(f"127.0.0.1:{echo_port}", ep)
        finally:
            await client.close()
