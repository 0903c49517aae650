"""hbone.wire.h1head: the one HTTP/1 head parser (requests, responses, trailers), incremental and bounded."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.wire.h1head import (
    HeadLimits,
    HeadScanner,
    HeadTooLarge,
    Http1Error,
    Request,
    Response,
    VersionNotSupported,
    is_field,
    parse_request_head,
    parse_response_head,
    parse_trailers,
)

HEAD = b"GET /a?b HTTP/1.1\r\nHost: example\r\nX-Empty:\r\nX-Pad:  v \t\r\n\r\n"


def scan(data: bytes, pieces: list[int], scanner: HeadScanner | None = None) -> tuple[int | None, bytearray]:
    """Feed `data` cut at `pieces`; return the end offset (once found) and the buffer."""
    scanner = scanner or HeadScanner()
    buf = bytearray()
    cuts = [0, *sorted(p for p in pieces if 0 < p < len(data)), len(data)]
    for a, b in itertools.pairwise(cuts):
        buf += data[a:b]
        end = scanner.find_end(buf)
        if end is not None:
            return end, buf
    return None, buf


def test_request_and_fields() -> None:
    end, buf = scan(HEAD + b"body", [])
    assert end == len(HEAD) and buf[end:] == b"body"
    req = parse_request_head(bytes(buf[: end - 4]))
    assert req == Request("GET", "/a?b", "HTTP/1.1", (("Host", "example"), ("X-Empty", ""), ("X-Pad", "v")))
    assert req.get("host") == "example" and req.get("nope") is None


def test_response_and_trailers() -> None:
    assert parse_response_head(b"HTTP/1.0 404 Not Found\r\nA: b") == Response(
        404, "Not Found", "HTTP/1.0", (("A", "b"),)
    )
    assert parse_response_head(b"HTTP/1.1 204 ").reason == ""
    assert parse_trailers(b"grpc-status: 0\r\nx: y") == (("grpc-status", "0"), ("x", "y"))


@given(st.lists(st.integers(0, len(HEAD) + 4), max_size=12))
def test_any_split_gives_the_same_end(pieces: list[int]) -> None:
    assert scan(HEAD + b"tail", pieces)[0] == len(HEAD)


def test_each_byte_is_scanned_once() -> None:
    """Byte by byte, the scanner resumes where it stopped (a CR at the end waits for its LF): no rescans."""
    scanner, buf, starts = HeadScanner(), bytearray(), []
    for i, byte in enumerate(HEAD[:-1]):
        buf.append(byte)
        starts.append(scanner._scanned)
        assert scanner.find_end(buf) is None
        assert scanner._scanned == (i if byte == 0x0D else i + 1)
    buf.append(HEAD[-1])
    assert scanner.find_end(buf) == len(HEAD)
    assert scanner._scanned == 0  # reset for the next head


def test_leading_empty_lines_are_skipped_and_counted() -> None:
    end, buf = scan(b"\r\n\r\n" + HEAD, [1, 3])
    assert end == len(HEAD) and bytes(buf[:end]) == HEAD
    with pytest.raises(HeadTooLarge, match=r"^more than 10 bytes of empty lines before the request$"):
        scan(b"\r\n" * 6, [], HeadScanner(HeadLimits(max_bytes=10)))


def test_bytes_after_the_head_are_not_judged() -> None:
    assert scan(HEAD + b"\n\r bare line endings in a body", [len(HEAD) - 1])[0] == len(HEAD)


BAD_SCANS = [
    (b"GET / HTTP/1.1\nHost: a\n\n", Http1Error,
     "bare LF at byte 14 of the request head; lines must end with CRLF (RFC 9112 §2.2)"),
    (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", Http1Error,
     "bare CR at byte 20 of the request head; lines must end with CRLF (RFC 9112 §2.2)"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 28 + b"\r\nY: " + b"b" * 28, HeadTooLarge, "request head exceeds 64 bytes"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20 + b"\r\nY: " + b"b" * 17 + b"\r\n\r\n", HeadTooLarge,
     "request head is 65 bytes; the maximum is 64"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 33, HeadTooLarge, "a line of the request head is longer than 32 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "error", "message"), BAD_SCANS)
def test_scanner_refuses(data: bytes, error: type[Exception], message: str) -> None:
    for pieces in ([], list(range(len(data)))):  # in one read and byte by byte: the same error
        with pytest.raises(error) as info:
            scan(data, pieces, HeadScanner(HeadLimits(max_bytes=64, max_line=32)))
        assert str(info.value) == message


BAD_HEADS = [
    (b"GET /  HTTP/1.1", Http1Error, 400,
     "request line 'GET /  HTTP/1.1' is not 'METHOD SP target SP HTTP/x.y' (RFC 9112 §3)"),
    (b"GET /", Http1Error, 400, "request line 'GET /' is not 'METHOD SP target SP HTTP/x.y' (RFC 9112 §3)"),
    (b"G(T / HTTP/1.1", Http1Error, 400, "request method 'G(T' is not a token (RFC 9110 §9.1)"),
    (b"GET /\x7f HTTP/1.1", Http1Error, 400,
     "request target '/\\x7f' has a space or control character (RFC 9112 §3.2)"),
    (b"GET / HTTZ/1.1", Http1Error, 400, "request line version 'HTTZ/1.1' is not HTTP/x.y (RFC 9112 §2.3)"),
    (b"GET / HTTP/2.0", VersionNotSupported, 505, "HTTP version HTTP/2.0 is not supported; expected HTTP/1.1"),
    (b"GET / HTTP/1.1\r\n folded", Http1Error, 400,
     "line 2 starts with whitespace: obsolete line folding (RFC 9112 §5.2)"),
    (b"GET / HTTP/1.1\r\nNoColon", Http1Error, 400, "header line 2 'NoColon' has no ':'"),
    (b"GET / HTTP/1.1\r\nA: 1\r\nHost : a", Http1Error, 400,
     "header line 3: field name 'Host ' is not a token (RFC 9112 §5.1)"),
    (b"GET / HTTP/1.1\r\nX: a\x00b", Http1Error, 400, "header 'X' contains control character '\\x00' (RFC 9110 §5.5)"),
    (b"GET / HTTP/1.1" + b"\r\nA: b" * 3, HeadTooLarge, 431, "request has 3 header fields; the maximum is 2"),
    (b"GET / HTTP/1.1\r\nA: " + b"b" * 40, HeadTooLarge, 431, "a line of the request is 43 bytes; the maximum is 32"),
]  # fmt: skip


@pytest.mark.parametrize(("head", "error", "status", "message"), BAD_HEADS)
def test_request_heads_refused(head: bytes, error: type[Http1Error], status: int, message: str) -> None:
    with pytest.raises(error) as info:
        parse_request_head(head, HeadLimits(max_fields=2, max_line=32))
    assert str(info.value) == message and info.value.http_status == status


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"HTTP/1.1 20 OK", "status line 'HTTP/1.1 20 OK' is not 'HTTP/x.y SP 3DIGIT SP reason' (RFC 9112 §4)"),
        (b"HTTP/1.1 2x0 OK", "status line 'HTTP/1.1 2x0 OK' is not 'HTTP/x.y SP 3DIGIT SP reason' (RFC 9112 §4)"),
        (b"HTTP/1.1 \xb2\xb2\xb2 OK",
         "status line 'HTTP/1.1 ²²² OK' is not 'HTTP/x.y SP 3DIGIT SP reason' (RFC 9112 §4)"),
        (b"ICY 200 OK", "status line version 'ICY' is not HTTP/x.y (RFC 9112 §2.3)"),
    ],
)  # fmt: skip
def test_response_heads_refused(head: bytes, message: str) -> None:
    with pytest.raises(Http1Error) as info:
        parse_response_head(head)
    assert str(info.value) == message


def test_is_field_for_writers() -> None:
    assert is_field("Content-Type", "text/plain; charset=utf-8")
    assert not is_field("Bad Name", "x") and not is_field("X", "a\r\nInjected: y") and not is_field("X", "a\x00")
