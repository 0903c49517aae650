"""hbone.wire.httpconnect: HTTP/1.1 CONNECT proxy request parser and responses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import BadRequest, LimitExceeded, ProtocolError
from hbone.wire.authority import InvalidAuthority
from hbone.wire.httpconnect import (
    BasicCredentials,
    HeadersTooLarge,
    HttpConnectParser,
    MethodNotAllowed,
    VersionNotSupported,
    connection_established,
    encode_basic,
    error_response,
    error_response_for,
)

CURL = (
    b"CONNECT echo.ns.svc.cluster.local:443 HTTP/1.1\r\n"
    b"Host: echo.ns.svc.cluster.local:443\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Proxy-Authorization: " + encode_basic("alice", "pa:ss").encode() + b"\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"\r\n"
)


def test_curl_request() -> None:
    p = HttpConnectParser()
    req = p.feed(CURL + b"\x16\x03\x01")
    assert req is not None
    assert str(req.target) == "echo.ns.svc.cluster.local:443"
    assert req.version == "HTTP/1.1"
    assert req.host == "echo.ns.svc.cluster.local:443"
    assert req.credentials == BasicCredentials("alice", "pa:ss")
    assert req.get("user-agent") == "curl/8.5.0"
    assert req.get("missing") is None
    assert p.leftover == b"\x16\x03\x01"
    assert p.feed(b"more") is None
    assert p.take_leftover() == b"\x16\x03\x01more"
    assert p.take_leftover() == b""
    assert p.request is req


def test_split_at_every_boundary() -> None:
    wire = b"\r\n" + CURL + b"tail"
    for cut in range(len(wire) + 1):
        p = HttpConnectParser()
        first = p.feed(wire[:cut])
        second = p.feed(wire[cut:])
        req = first or second
        assert req is not None and req.credentials is not None, cut
        assert p.take_leftover() == b"tail"


def test_byte_at_a_time() -> None:
    p = HttpConnectParser()
    results = [p.feed(bytes([b])) for b in CURL]
    assert all(r is None for r in results[:-1]) and results[-1] is not None


def test_minimal_ipv6_http10_and_other_auth_scheme() -> None:
    p = HttpConnectParser()
    req = p.feed(b"CONNECT [::1]:8080 HTTP/1.0\r\nProxy-Authorization: Bearer tok\r\n\r\n")
    assert req is not None and str(req.target) == "[::1]:8080" and req.version == "HTTP/1.0"
    assert req.proxy_authorization == "Bearer tok" and req.credentials is None
    assert req.host is None
    req = HttpConnectParser().feed(b"CONNECT a:1 HTTP/1.1\r\nX:\r\nContent-Length: 0\r\n\r\n")
    assert req is not None and req.get("x") == ""


@pytest.mark.parametrize(
    ("wire", "exc", "status", "fragment"),
    [
        (b"GET http://a/ HTTP/1.1\r\n\r\n", MethodNotAllowed, 405, "method 'GET' is not supported"),
        (b"connect a:1 HTTP/1.1\r\n\r\n", MethodNotAllowed, 405, "case-sensitive"),
        (b"CONNECT a:1 HTTP/2.0\r\n\r\n", VersionNotSupported, 505, "HTTP/2.0"),
        (b"CONNECT a:1 HTTZ/1.1\r\n\r\n", BadRequest, 400, "is not HTTP/x.y"),
        (b"CONNECT  a:1 HTTP/1.1\r\n\r\n", BadRequest, 400, "METHOD SP target"),
        (b"CONNECT a:1\r\n\r\n", BadRequest, 400, "METHOD SP target"),
        (b"CONN(ECT a:1 HTTP/1.1\r\n\r\n", BadRequest, 400, "not a token"),
        (b"CONNECT a HTTP/1.1\r\n\r\n", InvalidAuthority, 400, "no port"),
        (b"CONNECT /path HTTP/1.1\r\n\r\n", InvalidAuthority, 400, "no port"),
        (b"CONNECT a:1 HTTP/1.1\nHost: a\n\n", BadRequest, 400, "bare LF at byte 20"),
        (b"CONNECT a:1 HTTP/1.1\r\nX: a\rb\r\n\r\n", BadRequest, 400, "bare CR at byte 26"),
        (b"CONNECT a:1 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", BadRequest, 400, "obsolete line folding"),
        (b"CONNECT a:1 HTTP/1.1\r\nNoColon\r\n\r\n", BadRequest, 400, "has no ':'"),
        (b"CONNECT a:1 HTTP/1.1\r\nBad Name: x\r\n\r\n", BadRequest, 400, "not a token"),
        (b"CONNECT a:1 HTTP/1.1\r\nHost : x\r\n\r\n", BadRequest, 400, "not a token"),
        (b"CONNECT a:1 HTTP/1.1\r\nX: a\x00b\r\n\r\n", BadRequest, 400, "control character"),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", BadRequest, 400, "2 host headers"),
        (b"CONNECT a:1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", BadRequest, 400, "Transfer-Encoding"),
        (b"CONNECT a:1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n", BadRequest, 400, "Content-Length is '5'"),
        (b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n", BadRequest, 400, "not valid base64"),
        (b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic YWJj\r\n\r\n", BadRequest, 400, "no ':'"),
    ],
)
def test_rejects(wire: bytes, exc: type[ProtocolError], status: int, fragment: str) -> None:
    with pytest.raises(exc) as info:
        HttpConnectParser().feed(wire)
    assert fragment in str(info.value)
    assert info.value.http_status == status


def test_limits() -> None:
    p = HttpConnectParser(max_header_bytes=64)
    assert p.feed(b"CONNECT a:1 HTTP/1.1\r\n") is None
    with pytest.raises(HeadersTooLarge, match="exceeds 64 bytes") as info:
        p.feed(b"X-Long: " + b"a" * 60)
    assert info.value.http_status == 431
    with pytest.raises(HeadersTooLarge, match="is 66 bytes; the maximum is 64"):
        HttpConnectParser(max_header_bytes=64).feed(b"CONNECT a:1 HTTP/1.1\r\nX: " + b"a" * 37 + b"\r\n\r\n")
    many = b"CONNECT a:1 HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n"
    with pytest.raises(HeadersTooLarge, match="101 header fields"):
        HttpConnectParser().feed(many)
    with pytest.raises(LimitExceeded, match="empty lines"):
        HttpConnectParser(max_header_bytes=10).feed(b"\r\n" * 6)


def test_responses() -> None:
    assert connection_established() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert connection_established([("Via", "1.1 hbone")]).endswith(b"Via: 1.1 hbone\r\n\r\n")
    resp = error_response(407, "credentials required", realm='me"sh')
    head, body = resp.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'Proxy-Authenticate: Basic realm="me\\"sh", charset="UTF-8"' in head
    assert b"Content-Length: 21" in head and b"Connection: close" in head
    assert body == b"credentials required\n"
    assert b"Allow: CONNECT" in error_response(405, "only CONNECT")
    for status in (400, 403, 502, 504):
        assert error_response(status, "why\r\nInjected: x").count(b"\r\nInjected") == 0
    with pytest.raises(BadRequest):
        connection_established([("Bad Name", "x")])


def test_error_response_for() -> None:
    assert error_response_for(TimeoutError()).startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert error_response_for(HeadersTooLarge("x")).startswith(b"HTTP/1.1 431 ")


_host = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{1,5}){0,3}", fullmatch=True)
_field = st.tuples(
    st.from_regex(r"X-[A-Za-z0-9-]{1,10}", fullmatch=True), st.from_regex(r"[ -~]{0,20}", fullmatch=True)
)


@given(_host, st.integers(1, 65535), st.lists(_field, max_size=5), st.binary(max_size=10), st.data())
def test_roundtrip(host: str, port: int, fields: list[tuple[str, str]], tail: bytes, data: st.DataObject) -> None:
    wire = f"CONNECT {host}:{port} HTTP/1.1\r\n".encode()
    wire += b"".join(f"{k}: {v}\r\n".encode() for k, v in fields) + b"\r\n" + tail
    cut = data.draw(st.integers(0, len(wire)))
    p = HttpConnectParser()
    first, second = p.feed(wire[:cut]), p.feed(wire[cut:])
    req = first or second
    assert req is not None
    assert (req.target.host, req.target.port) == (host, port)
    assert req.headers == tuple((k, v.strip(" \t")) for k, v in fields)
    assert p.take_leftover() == tail


@given(st.lists(st.binary(max_size=50), max_size=5))
def test_fuzz(chunks: list[bytes]) -> None:
    p = HttpConnectParser(max_header_bytes=128)
    try:
        for chunk in chunks:
            p.feed(chunk)
    except ProtocolError:
        pass


@given(st.lists(st.sampled_from([b"CONNECT", b" ", b"a:1", b"HTTP/1.1", b"\r\n", b"\r", b"\n", b"X: y", b":"])))
def test_fuzz_tokens(parts: list[bytes]) -> None:
    try:
        HttpConnectParser().feed(b"".join(parts))
    except ProtocolError:
        pass
