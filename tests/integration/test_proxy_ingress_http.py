"""Ingress HTTP routed per request: two backends behind two HBONE servers, one client connection, both protocols.

The backends (`web_backend`) speak HTTP/1.1 and h2c prior knowledge on one port and answer with their name, the
request they saw and its body length, so a test can tell which backend served which request on a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hbone.client import HboneClient
from hbone.grpc.transport import ByteStreamTransport
from hbone.net.connection import H2Connection
from hbone.net.endpoints import connect
from hbone.net.relay import TcpEnd
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.proxy.frontend import Dialer
from hbone.proxy.ingress import H2_PREFACE, Ingress, parse_hosts
from hbone.proxy.routing import Action, Match, Route, RouteTable, Via
from hbone.testing import TestCA
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.http1 import Data, EndOfMessage, MessageReader, Request, Response, encode_chunk, encode_response
from tests.integration.test_proxy_mesh import IO, hbone_node

pytestmark = pytest.mark.timeout(30)


def answer_text(name: str, method: str, host: str, path: str, body: bytes) -> bytes:
    return f"{name} {method} {host}{path} body={len(body)}\n".encode()


async def _serve_h1(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
    parser = MessageReader()
    events = parser.feed(first)
    while True:
        req: Request | None = None
        body = b""
        trailers: tuple[tuple[str, str], ...] = ()
        while True:
            for ev in events:
                if isinstance(ev, Request):
                    req = ev
                elif isinstance(ev, Data):
                    body += ev.data
                elif isinstance(ev, EndOfMessage):
                    trailers = ev.trailers
            events = []
            if parser.done:
                break
            data = await reader.read(65536)
            events = parser.feed(data) if data else parser.eof()
            if not data and not events:
                return
        assert req is not None
        if req.target == "/hang":
            await asyncio.sleep(3600)
        text = answer_text(name, req.method, req.get("host") or "", req.target, body)
        text += "".join(f"trailer {k}={v}\n" for k, v in trailers).encode()
        if req.target == "/close":  # close-delimited response (RFC 9112 §6.3 rule 8)
            writer.write(encode_response(Response(200, "OK", "HTTP/1.1", (("connection", "close"),))) + text)
            writer.close()
            return
        if req.target == "/chunked":
            head = Response(200, "OK", "HTTP/1.1", (("transfer-encoding", "chunked"), ("x-backend", name)))
            writer.write(encode_response(head) + encode_chunk(text[:5]) + encode_chunk(text[5:]) + b"0\r\n\r\n")
        else:
            head = Response(200, "OK", "HTTP/1.1", (("content-length", str(len(text))), ("x-backend", name)))
            writer.write(encode_response(head) + text)
        await writer.drain()
        parser.next_message()
        events = parser.feed(b"")


async def _serve_h2_stream(name: str, stream: Stream) -> None:
    h = {k.decode(): v.decode() for k, v in stream.request_headers}
    body = b""
    while chunk := await stream.read():
        body += chunk
    if h[":path"] == "/hang":
        await asyncio.sleep(3600)
    text = answer_text(name, h[":method"], h[":authority"], h[":path"], body)
    stream.send_headers([(":status", "200"), ("x-backend", name), ("x-forwarded-for", h.get("x-forwarded-for", ""))])
    stream.write(text)
    stream.send_trailers([("x-served-by", name)])


@contextlib.asynccontextmanager
async def web_backend(name: str) -> AsyncIterator[int]:
    """HTTP/1.1 and h2c (prior knowledge) on one port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = b""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                data = await reader.read(len(H2_PREFACE) - len(first))
                if not data:
                    break
                first += data
            if first == H2_PREFACE:
                conn = H2Connection(client=False, handler=lambda s: _serve_h2_stream(name, s))
                ByteStreamTransport(TcpEnd(reader, writer, first), conn).start()
                await conn.wait_closed()
            else:
                await _serve_h1(name, reader, writer, first)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@dataclass
class Setup:
    ingress: Ingress
    port: int
    inbound_totals: list[int]


@contextlib.asynccontextmanager
async def two_backends(ca: TestCA, request_timeout: float = 15.0) -> AsyncIterator[Setup]:
    """Ingress → (a.example → svc-a via HBONE server A, b.example → svc-b via HBONE server B)."""
    async with web_backend("A") as pa, web_backend("B") as pb:
        ports = {"svc-a.ns:80": pa, "svc-b.ns:80": pb}

        async def resolve(target: Authority) -> tuple[str, int]:
            return "127.0.0.1", ports[str(target)]

        async with hbone_node(ca, "a", "ns", resolve=resolve) as na, hbone_node(ca, "b", "ns", resolve=resolve) as nb:
            routes = tuple(
                Route(n.identity.service_account, Action.HBONE, Match(hosts=(f"svc-{n.identity.service_account}.ns",)),
                      Via(parse_authority(n.address), (str(n.identity),)))
                for n in (na, nb)
            )  # fmt: skip
            client = HboneClient(ca.mesh_tls("istio-system", "ingress"))
            hosts = {"a.example": "svc-a.ns:80", "b.example": "svc-b.ns:80", "gone.example": "svc-gone.ns:80"}
            ingress = Ingress(
                Dialer(client, RouteTable(routes)), hosts=parse_hosts(hosts), request_timeout=request_timeout
            )
            server = await ingress.start_http("127.0.0.1", 0)
            try:
                yield Setup(ingress, int(server.sockets[0].getsockname()[1]), [na.inbound.total, nb.inbound.total])
            finally:
                server.close()
                await ingress.close()
                await client.close()


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[Response, bytes]:
    parser = MessageReader(response=True, request_method=method)
    head, body = None, b""
    async with asyncio.timeout(IO):
        while not parser.done:
            data = await reader.read(65536)
            for ev in parser.feed(data) if data else parser.eof():
                if isinstance(ev, Response):
                    head = ev
                elif isinstance(ev, Data):
                    body += ev.data
            if not data:
                break
    assert head is not None
    return head, body


async def test_http1_keepalive_routes_each_request(ca: TestCA) -> None:
    async with two_backends(ca) as s:
        r, w = await asyncio.open_connection("127.0.0.1", s.port)
        # Two requests pipelined in one write, different hosts: answered in order by their own backends.
        w.write(b"GET /one HTTP/1.1\r\nHost: a.example\r\n\r\nGET /two HTTP/1.1\r\nHost: b.example:80\r\n\r\n")
        head, body = await read_response(r)
        assert head.status == 200 and body == b"A GET a.example/one body=0\n" and head.get("x-backend") == "A"
        head, body = await read_response(r)
        assert body == b"B GET b.example:80/two body=0\n"
        # Chunked request body with a trailer, chunked response re-chunked to the client.
        w.write(b"POST /chunked HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-sum: 7\r\n\r\n")  # fmt: skip
        head, body = await read_response(r, "POST")
        assert head.get("transfer-encoding") == "chunked"
        assert body == b"A POST a.example/chunked body=7\ntrailer x-sum=7\n"
        # Content-Length body; then a host nobody serves: 404, and the connection still works.
        w.write(b"PUT /cl HTTP/1.1\r\nHost: b.example\r\nContent-Length: 5\r\n\r\nhello")
        assert (await read_response(r, "PUT"))[1] == b"B PUT b.example/cl body=5\n"
        w.write(b"POST /x HTTP/1.1\r\nHost: nobody.example\r\nContent-Length: 3\r\n\r\nabc")
        head, body = await read_response(r, "POST")
        assert head.status == 404 and b"nobody.example" in body
        # A close-delimited backend response is re-framed as chunked: the client connection survives it.
        w.write(b"GET /close HTTP/1.1\r\nHost: a.example\r\n\r\n")
        head, body = await read_response(r)
        assert head.get("transfer-encoding") == "chunked" and body == b"A GET a.example/close body=0\n"
        w.write(b"GET /again HTTP/1.1\r\nHost: a.example\r\n\r\n")  # backend A reopened transparently
        assert (await read_response(r))[1] == b"A GET a.example/again body=0\n"
        # Upstream unreachable: 502 with the reason, then close.
        w.write(b"GET / HTTP/1.1\r\nHost: gone.example\r\n\r\n")
        head, body = await read_response(r)
        assert head.status == 502 and head.get("connection") == "close"
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", s.port)
        w.write(b"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        head, body = await read_response(r)
        assert head.status == 400 and b"Transfer-Encoding and Content-Length" in body
        w.close()


async def test_http1_504_when_backend_does_not_answer(ca: TestCA) -> None:
    async with two_backends(ca, request_timeout=0.5) as s:
        r, w = await asyncio.open_connection("127.0.0.1", s.port)
        w.write(b"GET /hang HTTP/1.1\r\nHost: a.example\r\n\r\n")
        head, _ = await read_response(r)
        assert head.status == 504
        w.close()


async def h2_request(conn: H2Connection, authority: str, path: str, body: bytes = b"") -> tuple[dict[str, str], bytes]:
    headers = [(":method", "POST" if body else "GET"), (":scheme", "http"), (":path", path), (":authority", authority)]
    stream = await conn.open_stream(headers, end_stream=not body)
    if body:
        stream.write(body)
        stream.write_eof()
    resp = {k.decode(): v.decode() for k, v in await asyncio.wait_for(stream.response_headers(), IO)}
    data = b""
    while chunk := await asyncio.wait_for(stream.read(), IO):
        data += chunk
    resp.update({f"trailer:{k.decode()}": v.decode() for k, v in stream.trailers or ()})
    return resp, data


async def test_h2_streams_routed_by_authority_over_pooled_backends(ca: TestCA) -> None:
    async with two_backends(ca, request_timeout=1.0) as s:
        conn = await connect("127.0.0.1", s.port, settings=H2Settings.client())
        try:
            results = await asyncio.gather(
                *(h2_request(conn, host, f"/{i}", b"x" * i) for i in range(6) for host in ("a.example", "b.example"))
            )
            for (resp, data), (i, host) in zip(
                results, [(i, h) for i in range(6) for h in ("a.example", "b.example")], strict=True
            ):
                name = "A" if host == "a.example" else "B"
                method = "POST" if i else "GET"
                assert resp[":status"] == "200" and data == f"{name} {method} {host}/{i} body={i}\n".encode()
                assert resp["trailer:x-served-by"] == name and resp["x-forwarded-for"] == "127.0.0.1"
            assert s.ingress.backends.opened == 2  # one pooled h2 connection per backend, shared by all streams
            resp, data = await h2_request(conn, "nobody.example", "/")
            assert resp[":status"] == "404" and b"nobody.example" in data
            resp, data = await h2_request(conn, "gone.example", "/")
            assert resp[":status"] == "502"
            resp, _ = await h2_request(conn, "a.example", "/hang")
            assert resp[":status"] == "504"
            # A backend connection that dies is reopened for the next request.
            for backend in list(s.ingress.backends._conns.values()):
                backend.abort()
            resp, data = await h2_request(conn, "b.example", "/after")
            assert data == b"B GET b.example/after body=0\n" and s.ingress.backends.opened == 3
        finally:
            await conn.close()
