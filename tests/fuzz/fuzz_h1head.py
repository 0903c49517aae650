"""The one HTTP/1 head parser (`hbone.wire.h1head`): a request or response head, or a trailer section, fed in
arbitrary reads. Where reads end must not matter: the scanner finds the same end (or raises the same error) as for
the whole input in one read; a parsed head re-encodes to bytes that parse to the same head."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire import h1head, http1
from tests.fuzz.harness import Bytes, Harness, chunks, pack

_KINDS = ("request head", "response head", "trailer section")


def _outcome(data: bytes, sizes: bytes, limits: h1head.HeadLimits, kind: int) -> tuple[str, object]:
    """("head", (end, parsed)), ("more", None) or ("error", exception type), for `data` in reads of `sizes`."""
    scanner = h1head.HeadScanner(limits, _KINDS[kind], skip_empty=kind == 0)
    buf = bytearray()
    fed = 0
    try:
        for piece in chunks(data, sizes):
            buf += piece
            fed += len(piece)
            end = scanner.find_end(buf)
            if end is not None:
                # Only leading empty lines may have been taken out of the buffer: what follows the head is intact.
                assert data[:fed].endswith(bytes(buf)), "the scanner changed bytes it was not to consume"
                return "head", (end, _parse(bytes(buf[: end - 4]), limits, kind))
    except HboneError as e:
        return "error", type(e)
    return "more", None


def _parse(block: bytes, limits: h1head.HeadLimits, kind: int) -> object:
    roomy = h1head.HeadLimits(1 << 20, 1 << 10, 1 << 20)
    if kind == 0:
        req = h1head.parse_request_head(block, limits)
        assert h1head.parse_request_head(http1.encode_request(req)[:-4], roomy) == req
        return req
    if kind == 1:
        resp = h1head.parse_response_head(block, limits)
        assert h1head.parse_response_head(http1.encode_response(resp)[:-4], roomy) == resp
        return resp
    return h1head.parse_trailers(block, limits)


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    kind = opts % 3
    scale = opts >> 6
    limits = h1head.HeadLimits(max_bytes=64 << scale, max_fields=1 + (opts >> 2 & 15), max_line=48 << scale)
    whole = _outcome(payload, b"", limits, kind)
    split = _outcome(payload, sizes, limits, kind)
    if whole[0] == "more":
        # A long line that came whole in the middle of an unfinished head is only seen once the head ends;
        # read by read it is seen while it grows. Either way nothing over the limits is ever accepted.
        assert split == whole or split == ("error", h1head.HeadTooLarge), (whole, split)
    else:
        assert whole[0] == split[0] and (whole[0] == "error" or whole == split), (whole, split)


def seeds() -> dict[str, bytes]:
    get = http1.encode_request(http1.Request("GET", "/", "HTTP/1.1", (("Host", "a"), ("X-Empty", ""))))
    ok = http1.encode_response(http1.Response(200, "OK", "HTTP/1.1", (("Content-Length", "2"),)))
    return {
        "request": pack(b"\x10", get + b"body"),
        "request-bytewise": pack(b"\x10", get, b"\1"),
        "leading-crlf": pack(b"\x10", b"\r\n\r\n" + get, b"\1\2"),
        "response": pack(b"\x11", ok + b"ok"),
        "trailers": pack(b"\x12", b"grpc-status: 0\r\ngrpc-message: x\r\n\r\n"),
        "bare-lf": pack(b"\x10", b"GET / HTTP/1.1\nHost: a\n\n", b"\3"),
        "bare-cr": pack(b"\x10", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", b"\1"),
        "cr-at-read-end": pack(b"\x10", get, b"\x0f"),
        "long-line": pack(b"\x00", b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n\r\n", b"\5"),
        "many-fields": pack(b"\x00", b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5 + b"\r\n"),
        "obs-fold": pack(b"\x10", b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
        "http2-version": pack(b"\x10", b"GET / HTTP/2.0\r\n\r\n"),
    }


HARNESS = Harness("h1head", run, (HboneError,), seeds, max_len=8192)
