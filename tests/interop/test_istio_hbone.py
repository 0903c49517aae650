"""HBONE both ways with istio's own Go stack (`istio.io/istio/pkg/hbone` via istio's echo client and server).

- istio's echo client → `hbone serve` (the real CLI) → istio's echo HTTP app: istio's client verifies our server
  certificate against the mesh root (its Go TLS checks the IP SAN); our server checks the client's SPIFFE id and
  logs it; a client from another namespace gets 401, which istio's client reports as such.
- The CONNECT istio's client sends is parsed strictly by our wire code on an in-process `HboneServer`. istio's
  Go dialer sends no `baggage`, `forwarded` or `traceparent` (its `Config.Headers` is never used), so those come
  from Envoy and our own client in other tests; this one pins down the exact header list Go sends.
- our `HboneClient` → istio's echo server's HBONE port (TLS) → a TCP echo: bytes both ways, the server's SAN
  checked by our client, and a wrong expected SAN refused before any CONNECT.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.errors import PeerIdentityError
from hbone.identity import IdentityManager, load_bundle
from hbone.identity.bundle import write_bundle
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId
from hbone.net.stream import Stream
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer, PeerInfo
from hbone.tls import MeshTls
from hbone.wire.tunnel_request import TunnelRequest, parse_tunnel_request
from tests.peers import LOOPBACK, NO_ADMIN, ProcessPeer, close_server, loopback_env, start_echo_server
from tests.peers.istioecho import EchoServer, echo_client

pytestmark = pytest.mark.timeout(120)
TD = "cluster.local"
SERVER_ID = f"spiffe://{TD}/ns/default/sa/server"
CLIENT_ID = f"spiffe://{TD}/ns/default/sa/client"
MALLORY_ID = f"spiffe://{TD}/ns/other/sa/mallory"
SERVE_READY = re.compile(r"listening mtls=127\.0\.0\.1:(\d+)")
# What ztunnel puts on its CONNECT (docs/hbone-spec.md: baggage with the source workload's labels,
# forwarded with the original source address, W3C traceparent).
BAGGAGE = ("k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=client,"
           "service.name=client,service.version=v1")  # fmt: skip
FORWARDED = 'for="10.0.0.9:41234"'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Mesh:
    server: Path
    client: Path
    mallory: Path

    @property
    def root(self) -> Path:
        return self.server / "root-cert.pem"


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    ca = CertificateAuthority.create_root(TD)
    # 127.0.0.1 as an IP SAN: istio's Go client verifies the server's certificate like any Go TLS client does
    # (hostname = the proxy address), then reads the SPIFFE id from it.
    server = write_bundle(tmp_path / "server", ca.issue(SpiffeId.parse(SERVER_ID), ips=[LOOPBACK]))
    client = write_bundle(tmp_path / "client", ca.issue(SpiffeId.parse(CLIENT_ID)))
    mallory = write_bundle(tmp_path / "mallory", ca.issue(SpiffeId.parse(MALLORY_ID)))
    return Mesh(server, client, mallory)


@pytest.fixture
async def app() -> AsyncIterator[EchoServer]:
    """istio's echo server as the plain HTTP application behind our HBONE server."""
    async with EchoServer() as srv:
        await srv.wait_ready()
        yield srv


async def hbone_serve(certs: Path) -> tuple[ProcessPeer, int]:
    peer = ProcessPeer([sys.executable, "-m", "hbone.cli", "-v", "serve", "--certs", str(certs),
                        "--listen", f"{LOOPBACK}:0", *NO_ADMIN], name="hbone-serve",
                       env=loopback_env({"PYTHONUNBUFFERED": "1"}))  # fmt: skip
    peer.start()
    deadline = asyncio.get_running_loop().time() + 30
    while (m := SERVE_READY.search(peer.log_path.read_text(errors="replace"))) is None:
        peer.check_running()
        if asyncio.get_running_loop().time() > deadline:
            peer.stop()
            raise TimeoutError(f"hbone serve did not start\n{peer.log_tail()}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation
    return peer, int(m.group(1))


async def wait_log(peer: ProcessPeer, *parts: str, timeout: float = 30) -> None:  # noqa: ASYNC109
    """Until one line of the peer's log contains every part."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(all(p in line for p in parts) for line in peer.log_path.read_text(errors="replace").splitlines()):
        peer.check_running()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no log line with {parts}\n{peer.log_tail()}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


async def test_istio_client_through_hbone_serve(mesh: Mesh, app: EchoServer) -> None:
    serve, port = await hbone_serve(mesh.server)
    with serve:
        url = f"http://{LOOPBACK}:{app.ports['HTTP/1.1']}/hello"
        rc, out = await echo_client(url, hbone=f"{LOOPBACK}:{port}", certs=mesh.client, ca=mesh.root)
        assert rc == 0, out + serve.log_tail()
        assert "StatusCode=200" in out and "URL=/hello" in out, out
        # istio's client read our SPIFFE id from the certificate it verified.
        assert f"remote={SERVER_ID}" in out, out
        # Our server saw and authorized istio's client certificate identity (the access record of the tunnel).
        await wait_log(serve, f'"src_identity":"{CLIENT_ID}"', '"status":200')

        # Another namespace is refused by the default (same-namespace) policy: istio's client reports our 401.
        rc, out = await echo_client(url, hbone=f"{LOOPBACK}:{port}", certs=mesh.mallory, ca=mesh.root)
        assert rc != 0
        assert "round trip failed: 401 Unauthorized" in out, out
        await wait_log(serve, f'"src_identity":"{MALLORY_ID}"', '"status":401')


class Recording(InboundHandler):
    """The inbound handler, also keeping each request as our wire code parses it (strictly)."""

    def __init__(self, config: InboundConfig) -> None:
        super().__init__(config)
        self.requests: list[TunnelRequest] = []
        self.raw: list[list[tuple[bytes, bytes]]] = []
        self.peers: list[PeerInfo] = []

    async def __call__(self, stream: Stream, peer: PeerInfo) -> None:
        self.raw.append([(bytes(k), bytes(v)) for k, v in stream.request_headers])
        self.requests.append(parse_tunnel_request(stream.request_headers, strict_telemetry=True))
        self.peers.append(peer)
        await super().__call__(stream, peer)


async def test_istio_client_connect_headers(mesh: Mesh, app: EchoServer) -> None:
    """Exactly what istio's Go client puts on its CONNECT, parsed strictly by our wire code.

    istio's `pkg/hbone` dialer (at the pinned commit) never copies `Config.Headers` into the request, so the echo
    client's `-M` headers (here ztunnel's baggage, forwarded and traceparent) do not reach the wire: Go's HTTP/2
    transport sends :authority, :method, accept-encoding and user-agent only. This test pins that down so the
    HBONE spec's "what istio's Go stack sends" stays true; our parser must accept it with no telemetry.
    """
    tls = MeshTls(IdentityManager.fixed(load_bundle(mesh.server)))
    handler = Recording(InboundConfig())
    server = HboneServer(tls, handler)
    _, port = await server.listen(LOOPBACK, 0)
    try:
        target = f"{LOOPBACK}:{app.ports['HTTP/1.1']}"
        headers = [f"baggage: {BAGGAGE}", f"forwarded: {FORWARDED}", f"traceparent: {TRACEPARENT}"]
        rc, out = await echo_client(f"http://{target}/", hbone=f"{LOOPBACK}:{port}", certs=mesh.client, ca=mesh.root,
                                    headers=headers)  # fmt: skip
        assert rc == 0, out
        assert handler.requests, "no CONNECT reached our server"
        assert handler.raw[0] == [(b":authority", target.encode()), (b":method", b"CONNECT"),
                                  (b"accept-encoding", b"gzip"), (b"user-agent", b"Go-http-client/2.0")]  # fmt: skip
        req = handler.requests[0]
        assert str(req.target) == target and req.path is None
        assert dict(req.baggage) == {} and req.forwarded == () and req.traceparent is None
        assert str(handler.peers[0].identity) == CLIENT_ID
    finally:
        await server.close()


async def test_hbone_client_to_istio_echo_server(mesh: Mesh) -> None:
    echo, echo_port = await start_echo_server()
    try:
        async with EchoServer(hbone=True, certs=mesh.server) as srv:
            await srv.wait_ready()
            client = HboneClient(MeshTls(IdentityManager.fixed(load_bundle(mesh.client))))
            try:
                ep = Endpoint(LOOPBACK, srv.ports["HBONE"], identities=(SERVER_ID,))
                tunnel = await asyncio.wait_for(client.open(f"{LOOPBACK}:{echo_port}", ep), 20)
                assert tunnel.status == 200 and str(tunnel.peer_identity) == SERVER_ID
                payload = b"through istio's Go HBONE server\n" * 2000
                tunnel.write(payload)
                tunnel.write_eof()
                got = b""
                while chunk := await asyncio.wait_for(tunnel.read(), 20):
                    got += chunk
                assert got == payload

                # A server whose certificate does not carry the identity we expect is refused after TLS.
                wrong = Endpoint(LOOPBACK, srv.ports["HBONE"], identities=(f"spiffe://{TD}/ns/default/sa/other",))
                with pytest.raises(PeerIdentityError):
                    await asyncio.wait_for(client.open(f"{LOOPBACK}:{echo_port}", wrong), 20)
            finally:
                await client.close()
    finally:
        await close_server(echo)
