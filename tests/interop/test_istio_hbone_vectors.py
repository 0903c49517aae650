"""The test vectors of docs/hbone-spec.md: decoded with our code, and compared with istio's Go HBONE stack live.

- V1: istio's Go client is pointed (through a TLS-terminating recorder) at our h2c HBONE server with the target
  127.0.0.7:8080 (loopback, nothing listens: our server answers 503); the HEADERS frame it sent must equal V1.
- V2: our server's 200, recorded between our client and our server.
- V3: istio's Go server's 200, recorded between our client and istio's echo server (structure only: it has a date).
- V4: our PROXY v2 header with TLV 0xD0, read by istio's Go echo server (go-proxyproto) as the client address.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.grpc.h2frames import H2Decoder
from hbone.identity.bundle import write_bundle
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.wire.proxyv2 import ProxyV2Reader, proxy_header
from hbone.wire.tunnel_request import parse_tunnel_request
from tests.peers import LOOPBACK, REPO_ROOT, close_server, start_echo_server
from tests.peers.h2app import server_tls_context
from tests.peers.istioecho import EchoServer, echo_client
from tests.peers.recorder import start_recorder

pytestmark = pytest.mark.timeout(120)
SPEC = REPO_ROOT / "docs" / "hbone-spec.md"
V1 = "000029010400000001418a089d5c0b81776e3c07814307434f4e4e45435450839bd9ab7a8dc475a74a6b589418b525812e0f"
V1_HEADERS = ((":authority", "127.0.0.7:8080"), (":method", "CONNECT"), ("accept-encoding", "gzip"),
              ("user-agent", "Go-http-client/2.0"))  # fmt: skip
V2 = "00000101040000000188"
V4 = ("0d0a0d0a000d0a515549540a2111003a0a0000097f000007a1121f90d0002b7370696666653a2f2f636c75737465722e6c6f63616c"
      "2f6e732f64656661756c742f73612f636c69656e74")  # fmt: skip
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


def frames(data: bytes, *, server: bool) -> list[tuple[int, bytes]]:
    """(type, whole frame bytes) of every frame in one recorded direction."""
    pos = 0 if server else 24  # the client connection preface
    out = []
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos : pos + 9 + length]))
        pos += 9 + length
    return out


def first_headers(data: bytes, *, server: bool) -> bytes:
    return next(f for kind, f in frames(data, server=server) if kind == 0x1)


def test_vectors_are_the_documented_ones() -> None:
    text = SPEC.read_text()
    for vector in (V1, V2, V4):
        assert vector in text


def test_vectors_decode_with_our_code() -> None:
    (rec,) = [r for r in H2Decoder(server=True).feed(bytes.fromhex(V1)) if r.kind == "HEADERS"]
    assert rec.headers == V1_HEADERS and rec.stream_id == 1 and rec.flags == ("END_HEADERS",)
    req = parse_tunnel_request(rec.headers, strict_telemetry=True)
    assert str(req.target) == "127.0.0.7:8080" and req.traceparent is None

    (rec,) = [r for r in H2Decoder(server=True).feed(bytes.fromhex(V2)) if r.kind == "HEADERS"]
    assert rec.headers == ((":status", "200"),)

    header = ProxyV2Reader().feed(bytes.fromhex(V4))
    assert header is not None and header.source is not None and header.destination is not None
    assert (str(header.source[0]), header.source[1]) == ("10.0.0.9", 41234)
    assert (str(header.destination[0]), header.destination[1]) == ("127.0.0.7", 8080)
    assert str(header.client_identity) == CLIENT_ID
    assert proxy_header(("10.0.0.9", 41234), ("127.0.0.7", 8080), client_identity=CLIENT_ID).hex() == V4


async def test_istio_go_client_sends_v1(tmp_path: Path) -> None:
    ca = CertificateAuthority.create_root("cluster.local")
    srv = write_bundle(tmp_path / "server", ca.issue(SpiffeId.parse("spiffe://cluster.local/ns/default/sa/server"),
                                                     ips=[LOOPBACK]))  # fmt: skip
    cli = write_bundle(tmp_path / "client", ca.issue(SpiffeId.parse(CLIENT_ID)))
    ours = HboneServer(None, InboundHandler(InboundConfig(dial_timeout=2.0)))
    _, h2c = await ours.listen(LOOPBACK, 0, plaintext=True)
    recorder, port, recordings = await start_recorder(h2c, server_tls_context(str(srv / "cert-chain.pem"),
                                                                                str(srv / "key.pem")))  # fmt: skip
    try:
        rc, out = await echo_client("tcp://127.0.0.7:8080", hbone=f"{LOOPBACK}:{port}", certs=cli,
                                    ca=srv / "root-cert.pem")  # fmt: skip
        assert rc != 0 and "503" in out, out  # nothing listens on 127.0.0.7:8080
        assert first_headers(bytes(recordings[0].client_to_server), server=False).hex() == V1
    finally:
        await close_server(recorder)
        await ours.close()


async def test_our_server_sends_v2_and_istio_server_v3() -> None:
    echo, echo_port = await start_echo_server()
    ours = HboneServer(None, InboundHandler(InboundConfig()))
    _, h2c = await ours.listen(LOOPBACK, 0, plaintext=True)
    client = HboneClient(None)
    try:
        async with EchoServer(hbone=True) as istio:  # plaintext HBONE (h2c) on istio's side too
            await istio.wait_ready()
            for upstream in (h2c, istio.ports["HBONE"]):
                recorder, port, recordings = await start_recorder(upstream)
                try:
                    tunnel = await asyncio.wait_for(client.open(f"{LOOPBACK}:{echo_port}", Endpoint(LOOPBACK, port)),
                                                    20)  # fmt: skip
                    tunnel.write(b"v")
                    assert await asyncio.wait_for(tunnel.read(1), 10) == b"v"
                    tunnel.reset()
                    frame = first_headers(bytes(recordings[0].server_to_client), server=True)
                finally:
                    await close_server(recorder)
                if upstream == h2c:
                    assert frame.hex() == V2
                else:
                    block = frame[9:]
                    assert block.startswith(bytes.fromhex("3fe11f88")), frame.hex()
                    (rec,) = [r for r in H2Decoder(server=True).feed(frame) if r.kind == "HEADERS"]
                    assert [k for k, _ in rec.headers] == [":status", "date"] and rec.headers[0][1] == "200"
    finally:
        await client.close()
        await ours.close()
        await close_server(echo)


async def test_istio_go_server_reads_v4() -> None:
    async with EchoServer(proxy_protocol=True) as istio:
        await istio.wait_ready()
        reader, writer = await asyncio.open_connection(LOOPBACK, istio.ports["TCP"])
        try:
            writer.write(bytes.fromhex(V4) + b"hello v4\n")
            body = b""
            while b"ProxyProtocol=" not in body:
                chunk = await asyncio.wait_for(reader.read(4096), 20)
                assert chunk, body
                body += chunk
        finally:
            writer.close()
        text = body.decode(errors="replace")
        assert "IP=10.0.0.9" in text and "ProxyProtocol=2" in text, text
