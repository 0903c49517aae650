"""HTTP/1.1 message reader (ingress front end): requests or responses in arbitrary reads, several messages per
connection, then EOF. Body bytes must add up to what the framing announced."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire import http1
from tests.fuzz.harness import Bytes, Harness, chunks, pack

_METHODS = ("GET", "HEAD", "CONNECT", "POST")


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    reader = http1.MessageReader(response=bool(opts & 1), max_head=1024 << (opts >> 5), max_headers=32)
    method = _METHODS[(opts >> 1) & 3]
    reader.request_method = method
    length = -1
    got = 0
    for piece in chunks(b.rest(), sizes):
        for event in reader.feed(piece):
            if isinstance(event, http1.Request | http1.Response):
                _, length = http1.body_framing(event, method)
                got = 0
                http1.keep_alive(event)
                http1.end_to_end(event.headers)
                if isinstance(event, http1.Request):
                    http1.encode_request(event)
                else:
                    http1.encode_response(event)
            elif isinstance(event, http1.Data):
                got += len(event.data)
            elif isinstance(event, http1.EndOfMessage) and reader.framing is http1.Framing.LENGTH:
                assert got == length, (got, length)
        if reader.done:
            reader.next_message(method)
            reader.feed(b"")
    reader.eof()


def seeds() -> dict[str, bytes]:
    get = http1.encode_request(http1.Request("GET", "/", "HTTP/1.1", (("Host", "a"),)))
    post = http1.encode_request(
        http1.Request("POST", "/x", "HTTP/1.1", (("Host", "a"), ("Transfer-Encoding", "chunked")))
    )
    chunked = post + http1.encode_chunk(b"hello") + http1.encode_last_chunk([("x-trailer", "1")])
    length = http1.encode_request(http1.Request("PUT", "/", "HTTP/1.1", (("Host", "a"), ("Content-Length", "3"))))
    ok = http1.encode_response(http1.Response(200, "OK", "HTTP/1.1", (("Content-Length", "2"),)))
    cont = http1.encode_response(http1.Response(100, "Continue", "HTTP/1.1", ()))
    close = http1.encode_response(http1.Response(200, "OK", "HTTP/1.0", ()))
    return {
        "get": pack(b"\0", get),
        "pipelined": pack(b"\0", get + get + length + b"abc"),
        "chunked": pack(b"\0", chunked, b"\3"),
        "length": pack(b"\0", length + b"abc"),
        "smuggle": pack(b"\0", post[:-2] + b"Content-Length: 5\r\n\r\n0\r\n\r\n"),
        "response": pack(b"\1", ok + b"hi"),
        "interim": pack(b"\1", cont + ok + b"hi"),
        "until-close": pack(b"\1", close + b"body until close"),
        "head-response": pack(b"\3", ok),
        "obs-fold": pack(b"\0", b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"),
        "http09": pack(b"\0", b"GET /\r\n\r\n"),
    }


HARNESS = Harness("http1", run, (HboneError,), seeds)
