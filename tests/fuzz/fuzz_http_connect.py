"""The HTTP CONNECT proxy's request head (RFC 9112 §2, §3.2.3), fed in arbitrary reads; what follows the head is
the tunnel's first bytes and must come out of `take_leftover` untouched."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire import httpconnect
from tests.fuzz.harness import Bytes, Harness, chunks, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    parser = httpconnect.HttpConnectParser(max_header_bytes=256 << (opts & 7), max_headers=1 + (opts >> 3))
    request = None
    for piece in chunks(payload, sizes):
        got = parser.feed(piece)
        if got is not None:
            assert request is None, "a request returned twice"
            request = got
    if request is not None:
        _ = (str(request.target), request.get("host"), request.credentials)
        leftover = parser.take_leftover()
        assert payload.endswith(leftover), "leftover is not the tail of the input"
        httpconnect.error_response_for(httpconnect.HeadersTooLarge("x"))


def seeds() -> dict[str, bytes]:
    auth = httpconnect.encode_basic("alice", "s3cret")
    base = b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"
    return {
        "plain": pack(b"\xff", base + b"\r\nfirst tunnel bytes"),
        "auth": pack(b"\xff", base + f"Proxy-Authorization: {auth}\r\n\r\n".encode()),
        "v6": pack(b"\xff", b"CONNECT [fd00::1]:443 HTTP/1.0\r\n\r\n"),
        "bytewise": pack(b"\xff", base + b"\r\n", b"\1"),
        "leading-crlf": pack(b"\xff", b"\r\n\r\n" + base + b"\r\n"),
        "get": pack(b"\xff", b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bare-lf": pack(b"\xff", b"CONNECT a:1 HTTP/1.1\nHost: a:1\n\n"),
        "non-basic": pack(b"\xff", base + b"Proxy-Authorization: Bearer abc\r\n\r\n"),
        "bad-base64": pack(b"\xff", base + b"Proxy-Authorization: Basic !!!\r\n\r\n"),
    }


HARNESS = Harness("http_connect", run, (HboneError,), seeds, max_len=8192)
