"""Gateways on loopback: SNI :15443 passthrough, double HBONE, egress with TLS origination, H2R reverse tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.commands.frontends_config import listener_from_dict
from hbone.errors import ConfigError, ConnectRefused, PeerIdentityError
from hbone.identity.certs import CertifiedKey
from hbone.net.stream import Stream
from hbone.proxy.double_hbone import open_double_hbone
from hbone.proxy.eastwest import SniGateway, static_resolver
from hbone.proxy.egress import EgressConfig, EgressHandler, EgressRule, TlsOrigination
from hbone.proxy.frontend import Dialer
from hbone.proxy.h2r import H2RGateway, H2RInbound, H2RNode, H2ROpener, local_names_resolver
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.routing import Action, Match, Route, RouteTable, Via
from hbone.server import HboneServer, PeerInfo
from hbone.testing import TestCA
from hbone.tls import check_server_peer
from hbone.wire.authority import Authority, parse_authority
from tests.integration.test_proxy_mesh import IO, echo_server, hbone_node, serving

pytestmark = pytest.mark.timeout(30)
SVC = "echo.ns.svc.cluster.local"
ISTIO_SNI = f"outbound_.8443_._.{SVC}"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def write_pem(tmp: Path, name: str, bundle: CertifiedKey) -> tuple[Path, Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    chain, key, root = tmp / f"{name}.pem", tmp / f"{name}.key", tmp / f"{name}-root.pem"
    chain.write_bytes(bundle.chain_pem())
    key.write_bytes(bundle.key_pem())
    root.write_bytes(bundle.roots_pem())
    return chain, key, root


@contextlib.asynccontextmanager
async def tls_echo(ca: TestCA, tmp: Path, seen_sni: list[str | None] | None = None) -> AsyncIterator[tuple[int, Path]]:
    """A TLS (server-auth) echo; yields (port, root CA file). Records the SNI it was asked for."""
    chain, key, root = write_pem(tmp, "echo", ca.issue("ns", "echo", dns=("localhost", SVC)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    if seen_sni is not None:
        ctx.sni_callback = lambda _obj, name, _ctx: seen_sni.append(name)  # type: ignore[func-returns-value]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
    try:
        yield int(server.sockets[0].getsockname()[1]), root
    finally:
        server.close()
        await server.wait_closed()


class RecordingInbound(InboundHandler):
    """Remembers the request headers and peer of each stream (to see tokens and end-to-end identities)."""

    seen: list[tuple[dict[str, str], PeerInfo]]

    async def __call__(self, stream: Stream, peer: PeerInfo) -> None:
        self.__dict__.setdefault("seen", []).append(({k.decode(): v.decode() for k, v in stream.request_headers}, peer))
        await super().__call__(stream, peer)


def fixed(host: str, port: int) -> InboundConfig:
    return InboundConfig(own_ports=frozenset(), resolve=static_resolver({f"{SVC}:8443": f"{host}:{port}"}))


def client_hello_bytes(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


async def test_sni_gateway_passthrough_token_and_refusals(ca: TestCA, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    sni_seen: list[str | None] = []
    async with tls_echo(ca, tmp_path, sni_seen) as (eport, root):
        tls = ca.mesh_tls("ns", "bob")
        inbound = RecordingInbound(fixed("127.0.0.1", eport))
        server = HboneServer(tls, inbound)
        _, hport = await server.listen("127.0.0.1", 0)
        via = Via(parse_authority(f"127.0.0.1:{hport}"))
        route = Route("mesh", Action.HBONE, Match(hosts=("*.svc.cluster.local",)), via, token_file=str(token))
        client = HboneClient(ca.mesh_tls("istio-system", "eastwest"))
        gw = SniGateway(Dialer(client, RouteTable((route,))))
        async with serving(lambda: gw.start("127.0.0.1", 0)) as gport:
            ctx = ssl.create_default_context(cafile=root)
            ctx.check_hostname = False
            r, w = await asyncio.open_connection("127.0.0.1", gport, ssl=ctx, server_hostname=ISTIO_SNI)
            assert check_server_peer(w.get_extra_info("ssl_object"), [ca.spiffe("ns", "echo")])
            w.write(b"through 15443")
            assert await asyncio.wait_for(r.readexactly(13), IO) == b"through 15443"
            w.close()
            headers, _ = inbound.seen[0]
            assert headers[":authority"] == f"{SVC}:8443" and headers["authorization"] == "Bearer s3cret"
            assert sni_seen == [ISTIO_SNI]  # the far side saw the client's own ClientHello

            for bad in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", client_hello_bytes(ISTIO_SNI)[:40], b"\x16\x03\x01"):
                r, w = await asyncio.open_connection("127.0.0.1", gport)
                w.write(bad)
                w.write_eof()
                answer = await asyncio.wait_for(r.read(), IO)
                assert answer in (b"", bytes((21, 3, 1, 0, 2, 2, 50)))
                w.close()
            r, w = await asyncio.open_connection("127.0.0.1", gport)
            w.write(client_hello_bytes("outbound_.80_._.other.example.com"))
            assert await asyncio.wait_for(r.read(), IO) == bytes((21, 3, 1, 0, 2, 2, 112))  # no route
            w.close()
            assert gw.refused == 4 and len(inbound.seen) == 1
        await client.close()
        await server.close()


async def test_double_hbone_inner_tls_end_to_end(ca: TestCA) -> None:
    async with echo_server() as eport:
        wl_tls = ca.mesh_tls("ns", "echo")
        workload = RecordingInbound(fixed("127.0.0.1", eport))
        wl_server = HboneServer(wl_tls, workload)
        _, wl_port = await wl_server.listen("127.0.0.1", 0)
        async with hbone_node(ca, "eastwest", "istio-system", resolve=fixed("127.0.0.1", wl_port).resolve) as gw:
            client = HboneClient(ca.mesh_tls("ns", "client"))
            gw_ep = Endpoint("127.0.0.1", gw.port, (str(gw.identity),))
            tunnel = await open_double_hbone(client, gw_ep, f"{SVC}:8443", [ca.spiffe("ns", "echo")], network="n1")
            assert tunnel.inner_identity == ca.spiffe("ns", "echo") and tunnel.outer_identity == gw.identity
            tunnel.stream.write(b"inner bytes")
            tunnel.stream.write_eof()
            got = b""
            while chunk := await asyncio.wait_for(tunnel.stream.read(), IO):
                got += chunk
            assert got == b"inner bytes"
            await tunnel.close()
            headers, peer = workload.seen[0]
            assert peer.identity == ca.spiffe("ns", "client")  # not the gateway: mTLS ran end to end
            assert headers["x-forwarded-network"] == "n1"
            with pytest.raises(PeerIdentityError):
                await open_double_hbone(client, gw_ep, f"{SVC}:8443", [ca.spiffe("ns", "someone-else")])
            await client.close()
        await wl_server.close()


async def test_egress_tls_origination_and_allow_list(ca: TestCA, tmp_path: Path) -> None:
    other_ca = TestCA("other.example")
    async with tls_echo(ca, tmp_path) as (eport, root), tls_echo(other_ca, tmp_path / "o") as (bad_port, _):
        rule = EgressRule(
            "local-tls",
            Match(hosts=("localhost",)),
            callers=("spiffe://cluster.local/ns/ns/sa/client",),
            tls=TlsOrigination(str(root)),
        )
        handler = EgressHandler(EgressConfig((rule,)))
        server = HboneServer(ca.mesh_tls("istio-system", "egress"), handler)
        _, port = await server.listen("127.0.0.1", 0)
        ep = Endpoint("127.0.0.1", port)
        client = HboneClient(ca.mesh_tls("ns", "client"))
        tunnel = await client.open(f"localhost:{eport}", ep)
        tunnel.write(b"plaintext in, TLS out")  # the echo only speaks TLS: the gateway originated it
        assert await asyncio.wait_for(tunnel.read(), IO) == b"plaintext in, TLS out"
        tunnel.reset()
        with pytest.raises(ConnectRefused) as refused:
            await client.open("127.0.0.1:9", ep)
        assert refused.value.status == 403 and "allow-list" in refused.value.detail
        with pytest.raises(ConnectRefused) as refused:
            await client.open(f"localhost:{bad_port}", ep)  # certificate from a CA we do not trust
        assert refused.value.status == 503 and "certificate verify failed" in refused.value.detail
        stranger = HboneClient(ca.mesh_tls("ns", "stranger"))
        with pytest.raises(ConnectRefused) as refused:
            await stranger.open(f"localhost:{eport}", ep)
        assert refused.value.status == 403 and "not allowed for" in refused.value.detail
        await stranger.close()
        await client.close()
        await server.close()


async def test_h2r_node_serves_through_gateway_and_reconnects(ca: TestCA) -> None:
    bob = ca.spiffe("ns", "bob")
    gw_tls = ca.mesh_tls("istio-system", "gw")
    gateway = H2RGateway(gw_tls, names={"bob.h2r": str(bob)})
    _, h2r_port = await gateway.listen("127.0.0.1", 0)
    front = HboneServer(gw_tls, H2RInbound(gateway, InboundConfig(own_ports=frozenset())))
    _, front_port = await front.listen("127.0.0.1", 0)
    node_inbound = InboundHandler(InboundConfig(own_ports=frozenset(), resolve=local_names_resolver({"bob.h2r"})))
    node = H2RNode(
        ca.mesh_tls("ns", "bob"),
        Endpoint("127.0.0.1", h2r_port, (str(gw_tls.manager.identity),)),
        node_inbound,
        backoff_max=0.5,
    )
    client = HboneClient(ca.mesh_tls("ns", "client"))
    async with echo_server() as eport:
        node.start()
        try:
            await asyncio.wait_for(gateway.wait_registered("bob.h2r"), IO)
            tunnel = await client.open(f"bob.h2r:{eport}", Endpoint("127.0.0.1", front_port))
            tunnel.write(b"via the node's own connection")
            tunnel.write_eof()
            assert await asyncio.wait_for(tunnel.read(), IO) == b"via the node's own connection"
            with pytest.raises(ConnectRefused):
                await client.open(f"nobody.invalid:{eport}", Endpoint("127.0.0.1", front_port))

            await gateway.close()  # restart the gateway on the same port
            gateway2 = H2RGateway(gw_tls, names={"bob.h2r": str(bob)})
            await gateway2.listen("127.0.0.1", h2r_port)
            await asyncio.wait_for(gateway2.wait_registered(str(bob)), IO)
            assert node.connects == 2
            upstream = await H2ROpener(gateway2).open(Authority("bob.h2r", eport))
            upstream.pipe.write(b"again")
            upstream.pipe.write_eof()
            assert await asyncio.wait_for(upstream.pipe.read(), IO) == b"again"
            await gateway2.close()
        finally:
            await node.stop()
            await client.close()
            await front.close()


async def test_h2r_is_no_open_relay(ca: TestCA) -> None:
    """The gateway reaches only registered nodes (503 otherwise); a node only its own names, never an IP."""
    bob = ca.spiffe("ns", "bob")
    gw_tls = ca.mesh_tls("istio-system", "gw")
    gateway = H2RGateway(gw_tls, names={"bob.h2r": str(bob)})
    _, h2r_port = await gateway.listen("127.0.0.1", 0)
    front = HboneServer(gw_tls, H2RInbound(gateway, InboundConfig(own_ports=frozenset())))
    _, front_port = await front.listen("127.0.0.1", 0)
    node_inbound = InboundHandler(InboundConfig(own_ports=frozenset(), resolve=local_names_resolver({"bob.h2r"})))
    node = H2RNode(
        ca.mesh_tls("ns", "bob"), Endpoint("127.0.0.1", h2r_port, (str(gw_tls.manager.identity),)), node_inbound
    )
    client = HboneClient(ca.mesh_tls("ns", "client"))
    ep = Endpoint("127.0.0.1", front_port, (str(gw_tls.manager.identity),))
    async with echo_server() as eport:
        node.start()
        try:
            await asyncio.wait_for(gateway.wait_registered("bob.h2r"), IO)
            with pytest.raises(ConnectRefused) as refused:  # main relayed this to the gateway's own loopback
                await client.open(f"127.0.0.1:{eport}", ep)
            assert refused.value.status == 503 and "not a registered H2R" in refused.value.detail
            with pytest.raises(ConnectRefused) as refused:
                await client.open(f"localhost:{eport}", ep)
            assert refused.value.status == 503
            with pytest.raises(ConnectRefused) as refused:  # an IP target through the node's own connection
                await gateway.open(str(bob), Authority("127.0.0.1", eport, parse_authority(f"127.0.0.1:{eport}").ip))
            assert refused.value.status == 503
            tunnel = await client.open(f"bob.h2r:{eport}", ep)  # the registered name still works
            tunnel.write(b"named")
            tunnel.write_eof()
            assert await asyncio.wait_for(tunnel.read(), IO) == b"named"
        finally:
            await node.stop()
            await client.close()
            await front.close()
            await gateway.close()


def test_h2r_node_needs_the_gateway_identity(ca: TestCA) -> None:
    inbound = InboundHandler(InboundConfig())
    with pytest.raises(ConfigError, match="gateway's SPIFFE id"):
        H2RNode(ca.mesh_tls("ns", "bob"), Endpoint("127.0.0.1", 1), inbound)
    with pytest.raises(ConfigError, match="gateway_identities"):
        listener_from_dict({"type": "h2r-node", "gateway": "127.0.0.1:1", "names": ["a"]}, "test")
