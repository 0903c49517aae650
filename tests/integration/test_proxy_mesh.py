"""Shared loopback mesh for the front-end tests (an HBONE server with a test CA), plus SOCKS5 / CONNECT tests.

Other `test_proxy_*` modules import the helpers from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from hbone.client import HboneClient
from hbone.identity.spiffe import SpiffeId
from hbone.proxy.frontend import Dialer
from hbone.proxy.httpproxy import HttpConnectProxy
from hbone.proxy.inbound import InboundConfig, InboundHandler, Resolver
from hbone.proxy.routing import Action, Match, Route, RouteTable, Via
from hbone.proxy.socks5 import Socks5Proxy
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server
from hbone.tls import MeshTls
from hbone.wire import socks5 as s5
from hbone.wire.authority import parse_authority
from hbone.wire.httpconnect import encode_basic

pytestmark = pytest.mark.timeout(30)
IO = 10.0


@dataclass
class Node:
    server: HboneServer
    port: int
    tls: MeshTls
    inbound: InboundHandler

    @property
    def identity(self) -> SpiffeId:
        ident = self.tls.manager.identity
        assert ident is not None
        return ident

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def hbone_node(
    ca: TestCA, sa: str = "bob", ns: str = "ns", resolve: Resolver | None = None, port: int = 0
) -> AsyncIterator[Node]:
    tls = ca.mesh_tls(ns, sa)
    cfg = InboundConfig(tls=tls, own_ports=frozenset())
    if resolve is not None:
        cfg.resolve = resolve
    inbound = InboundHandler(cfg)
    server = HboneServer(tls, inbound)
    _, bound = await server.listen("127.0.0.1", port)
    try:
        yield Node(server, bound, tls, inbound)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    server, port = await start_echo_server()
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serving(start: Callable[[], Awaitable[asyncio.Server]]) -> AsyncIterator[int]:
    server = await start()
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def via_table(node: Node, *extra: Route) -> RouteTable:
    return RouteTable(extra, Route("mesh", Action.HBONE, via=Via(parse_authority(node.address), (str(node.identity),))))


async def echo_through(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    writer.write_eof()
    out = await asyncio.wait_for(reader.read(-1), IO)
    writer.close()
    return out


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


async def socks_connect(
    port: int, host: str, dport: int, auth: tuple[str, str] | None = None
) -> tuple[s5.Reply, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(s5.encode_greeting([s5.Method.USERPASS] if auth else [s5.Method.NO_AUTH]))
    method = await asyncio.wait_for(reader.readexactly(2), IO)
    if auth:
        assert method == bytes((5, s5.Method.USERPASS))
        writer.write(s5.encode_userpass(*auth))
        status = await asyncio.wait_for(reader.readexactly(2), IO)
        if status[1] != 0:
            return s5.Reply(s5.ReplyCode.NOT_ALLOWED, "", 0), reader, writer
    writer.write(s5.encode_request(host, dport))
    buf = b""
    while (decoded := s5.decode_reply(buf)) is None:
        chunk = await asyncio.wait_for(reader.read(64), IO)
        assert chunk, "proxy closed before replying"
        buf += chunk
    return decoded[0], reader, writer


async def test_socks5_through_hbone_ipv4_and_domain(ca: TestCA) -> None:
    async with hbone_node(ca) as node, echo_server() as eport:
        client = HboneClient(ca.mesh_tls("ns", "client"))
        proxy = Socks5Proxy(Dialer(client, via_table(node)))
        async with serving(lambda: proxy.start("127.0.0.1", 0)) as port:
            for host in ("127.0.0.1", "localhost"):
                reply, r, w = await socks_connect(port, host, eport)
                assert reply.code == s5.ReplyCode.SUCCEEDED
                assert await echo_through(r, w, b"x" * 100_000) == b"x" * 100_000
        await client.close()
    assert node.inbound.total == 2


async def test_socks5_reply_codes_and_auth(ca: TestCA) -> None:
    async with hbone_node(ca) as node, echo_server() as eport:
        client = HboneClient(ca.mesh_tls("ns", "client"))
        deny = Route("blocked", Action.DENY, Match(ports=(9,)))
        # 127.0.0.2 is dialed directly, rewritten to the loopback echo's address
        direct = Route("lan", Action.DIRECT, Match(hosts=("127.0.0.2",)), target="127.0.0.1:{port}")
        proxy = Socks5Proxy(Dialer(client, via_table(node, deny, direct)), users={"u": "p"})
        async with serving(lambda: proxy.start("127.0.0.1", 0)) as port:
            reply, _, w = await socks_connect(port, "127.0.0.1", eport, ("u", "bad"))
            assert reply.code == s5.ReplyCode.NOT_ALLOWED
            w.close()
            reply, _, w = await socks_connect(port, "127.0.0.1", 9, ("u", "p"))
            assert reply.code == s5.ReplyCode.NOT_ALLOWED  # route denies
            w.close()
            closed = await _closed_port()
            reply, _, w = await socks_connect(port, "127.0.0.1", closed, ("u", "p"))
            assert reply.code == s5.ReplyCode.HOST_UNREACHABLE  # the HBONE server answered 503
            w.close()
            reply, _, w = await socks_connect(port, "127.0.0.2", closed, ("u", "p"))
            assert reply.code == s5.ReplyCode.CONNECTION_REFUSED  # direct dial refused
            w.close()
            reply, r, w = await socks_connect(port, "127.0.0.2", eport, ("u", "p"))
            assert reply.code == s5.ReplyCode.SUCCEEDED
            assert await echo_through(r, w, b"direct") == b"direct"
        await client.close()


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def http_connect(
    port: int, target: str, auth: str | None = None
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth:
        head += f"Proxy-Authorization: {auth}\r\n"
    writer.write((head + "\r\n").encode())
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO)
    return response, reader, writer


async def test_http_connect_statuses(ca: TestCA) -> None:
    async with hbone_node(ca) as node, echo_server() as eport:
        client = HboneClient(ca.mesh_tls("ns", "client"))
        deny = Route("blocked", Action.DENY, Match(ports=(9,)))
        proxy = HttpConnectProxy(Dialer(client, via_table(node, deny)), users={"u": "p"})
        good = encode_basic("u", "p")
        async with serving(lambda: proxy.start("127.0.0.1", 0)) as port:
            head, r, w = await http_connect(port, f"127.0.0.1:{eport}", good)
            assert head.startswith(b"HTTP/1.1 200")
            assert await echo_through(r, w, b"hello") == b"hello"
            head, r, w = await http_connect(port, f"127.0.0.1:{eport}")
            assert head.startswith(b"HTTP/1.1 407") and b"Proxy-Authenticate: Basic" in head
            w.close()
            head, r, w = await http_connect(port, "127.0.0.1:9", good)
            body = await asyncio.wait_for(r.read(), IO)
            assert head.startswith(b"HTTP/1.1 403") and b"not allowed" in body
            w.close()
            head, r, w = await http_connect(port, f"127.0.0.1:{await _closed_port()}", good)
            body = await asyncio.wait_for(r.read(), IO)
            assert head.startswith(b"HTTP/1.1 502") and b"503" in body, body
            w.close()
        await client.close()


def test_socks_reply_struct() -> None:
    # bind address in the success reply is the proxy's own address (RFC 1928 §6)
    assert s5.encode_reply(s5.ReplyCode.SUCCEEDED, ("127.0.0.1", 1080))[4:] == bytes((127, 0, 0, 1)) + struct.pack(
        "!H", 1080
    )
