"""Raw HTTP/2 against our gRPC server and client: request validation, and malformed frames that must fail only
the call that carried them while other calls on the same connection continue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.grpc.framing import encode_message
from hbone.grpc.metadata import request_headers, response_headers
from hbone.grpc.server import GrpcServer
from hbone.grpc.testing import PREFIX, EchoService
from hbone.net.connection import H2Connection
from hbone.net.endpoints import connect, serve
from hbone.net.stream import Stream
from hbone.server import PeerInfo

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


def fields(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}


@pytest.fixture
async def raw_server() -> AsyncIterator[int]:
    """GrpcServer behind a bare HTTP/2 listener: every stream reaches its validation, whatever the method."""
    grpc = GrpcServer(max_receive_message_size=1 * MiB)
    EchoService().register(grpc)
    peer = PeerInfo(None, None, None, tls=False)

    async def handler(stream: Stream) -> None:
        await grpc(stream, peer)

    server = await serve(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def exchange(conn: H2Connection, headers: Any, body: bytes = b"") -> tuple[dict[str, str], Stream]:
    stream = await conn.open_stream(headers)
    if body:
        stream.write(body)
    stream.write_eof()
    return fields(await asyncio.wait_for(stream.response_headers(), 5)), stream


def grpc_request(path: str = PREFIX + "Unary", **kw: Any) -> list[tuple[str, str]]:
    return request_headers(path, "localhost", **kw)


@pytest.mark.parametrize(
    ("mutate", "http", "code"),
    [
        (lambda h: [(k, "GET" if k == ":method" else v) for k, v in h], "405", GrpcStatus.INTERNAL),
        (lambda h: [(k, "text/plain" if k == "content-type" else v) for k, v in h], "415", GrpcStatus.INTERNAL),
        (lambda h: [(k, v) for k, v in h if k != "te"], "200", GrpcStatus.INTERNAL),
        (lambda h: [*h, ("grpc-timeout", "forever")], "200", GrpcStatus.INTERNAL),
        (lambda h: [*h, ("grpc-encoding", "br")], "200", GrpcStatus.UNIMPLEMENTED),
        (lambda h: [(k, "/nopath" if k == ":path" else v) for k, v in h], "200", GrpcStatus.UNIMPLEMENTED),
        (lambda h: [(k, "/x.Y/Z" if k == ":path" else v) for k, v in h], "200", GrpcStatus.UNIMPLEMENTED),
    ],
)
async def test_request_validation(raw_server: int, mutate: Any, http: str, code: GrpcStatus) -> None:
    conn = await connect("127.0.0.1", raw_server)
    try:
        got, _ = await exchange(conn, mutate(grpc_request()), encode_message(b"x"))
        assert got[":status"] == http
        assert got["grpc-status"] == str(int(code))
        if code is GrpcStatus.UNIMPLEMENTED and "grpc-encoding" in str(mutate(grpc_request())):
            assert "gzip" in got["grpc-accept-encoding"]
    finally:
        await conn.close()


MALFORMED = {
    "truncated prefix": (b"\x00\x00\x00", GrpcStatus.INTERNAL),
    "truncated body": (b"\x00\x00\x00\x00\x10abc", GrpcStatus.INTERNAL),
    "length over limit": (b"\x00" + (64 * MiB).to_bytes(4, "big") + b"x" * 100, GrpcStatus.RESOURCE_EXHAUSTED),
    "bad compressed flag": (b"\x07\x00\x00\x00\x01x", GrpcStatus.INTERNAL),
    "compressed without encoding": (b"\x01\x00\x00\x00\x01x", GrpcStatus.INTERNAL),
}


async def test_malformed_request_frames_fail_only_their_call(raw_server: int) -> None:
    conn = await connect("127.0.0.1", raw_server)
    try:
        # A bidi call that stays open across all the bad calls on the same connection.
        bidi = await conn.open_stream(grpc_request(PREFIX + "Bidi"))
        bidi.write(encode_message(b"before"))
        assert fields(await bidi.response_headers())[":status"] == "200"
        assert await bidi.readexactly(11) == encode_message(b"before")
        for name, (body, code) in MALFORMED.items():
            got, _ = await exchange(conn, grpc_request(), body)
            assert got.get("grpc-status") == str(int(code)), name
            assert got.get("grpc-message"), name
        # Garbage trailers from the client (a HEADERS block after the body) are ignored.
        stream = await conn.open_stream(grpc_request())
        stream.write(encode_message(b"ok"))
        stream.send_trailers([("grpc-status", "banana")])
        assert fields(await stream.response_headers())[":status"] == "200"
        assert await stream.readexactly(7) == encode_message(b"ok")
        bidi.write(encode_message(b"after"))
        assert await bidi.readexactly(10) == encode_message(b"after")
        bidi.write_eof()
        assert await bidi.read() == b""
        assert fields(bidi.trailers or [])["grpc-status"] == "0"
        assert conn.is_usable
    finally:
        await conn.close()


# --- a misbehaving server against our client -------------------------------------------------------------------


def _bad_reply(path: str) -> tuple[bytes, list[tuple[str, str]]]:
    ok = [("grpc-status", "0")]
    return {
        "/bad.S/TruncatedPrefix": (b"\x00\x00", ok),
        "/bad.S/TruncatedBody": (b"\x00\x00\x00\x00\x09abc", ok),
        "/bad.S/OverLimit": (b"\x00" + (8 * MiB).to_bytes(4, "big"), ok),
        "/bad.S/BadFlag": (b"\x05\x00\x00\x00\x01x", ok),
        "/bad.S/GarbageStatus": (encode_message(b"fine"), [("grpc-status", "banana")]),
        "/bad.S/NoStatus": (encode_message(b"fine"), [("x-other", "1")]),
    }.get(path, (encode_message(b"good"), ok))


@pytest.fixture
async def bad_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    release = asyncio.Event()

    async def handler(stream: Stream) -> None:
        path = dict(stream.request_headers)[b":path"].decode()
        body, trailers = _bad_reply(path)
        while await stream.read():
            pass
        if path == "/bad.S/Hold":
            stream.send_headers(response_headers())
            stream.write(encode_message(b"held"))
            await release.wait()  # stays open until the test has run its bad and good calls
        else:
            stream.send_headers(response_headers())
            stream.write(body)
        stream.send_trailers(trailers)

    server = await serve(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], release
    finally:
        server.close()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/bad.S/TruncatedPrefix", GrpcStatus.INTERNAL),
        ("/bad.S/TruncatedBody", GrpcStatus.INTERNAL),
        ("/bad.S/OverLimit", GrpcStatus.RESOURCE_EXHAUSTED),
        ("/bad.S/BadFlag", GrpcStatus.INTERNAL),
        ("/bad.S/GarbageStatus", GrpcStatus.INTERNAL),
        ("/bad.S/NoStatus", GrpcStatus.UNKNOWN),
    ],
)
async def test_malformed_responses_fail_only_their_call(bad_server: Any, path: str, code: GrpcStatus) -> None:
    port, release = bad_server
    async with Channel(f"127.0.0.1:{port}") as ch:
        held = asyncio.ensure_future(ch.unary("/bad.S/Hold", b""))
        with pytest.raises(GrpcError) as err:
            await ch.unary(path, b"")
        assert err.value.status is code
        assert await ch.unary("/bad.S/Good", b"") == b"good"
        assert not held.done()
        release.set()
        assert await asyncio.wait_for(held, 5) == b"held"
