"""TLS ClientHello reassembly and SNI/ALPN/versions parsing (SNI gateway, egress), in arbitrary reads; then the
Istio SNI form (`outbound_.PORT_._.HOST`) of whatever name was found."""

from __future__ import annotations

import ssl

from hbone.errors import HboneError
from hbone.wire.clienthello import ClientHelloReader, parse_istio_sni, sni_target
from tests.fuzz.harness import Bytes, Harness, chunks, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    reader = ClientHelloReader(max_size=512 << (opts & 7))
    hello = None
    for piece in chunks(payload, sizes):
        got = reader.feed(piece)
        if got is not None:
            assert hello is None, "a ClientHello returned twice"
            hello = got
    assert reader.data == payload
    if hello is None:
        return
    assert payload == hello.raw + reader.leftover
    _ = hello.offers_tls13
    if hello.server_name is not None:
        parse_istio_sni(hello.server_name)
        sni_target(hello.server_name)


def _hello(server_name: str | None, alpn: list[str] | None = None, tls12: bool = False) -> bytes:
    """The first flight of Python's own TLS client (OpenSSL's ClientHello encoder)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def seeds() -> dict[str, bytes]:
    h = _hello("reviews.default.svc.cluster.local", ["h2", "http/1.1"])
    return {
        "sni-alpn": pack(b"\3", h),
        "istio-sni": pack(b"\3", _hello("outbound_.9080_._.reviews.default.svc.cluster.local", ["istio-peer"])),
        "no-sni": pack(b"\3", _hello(None)),
        "tls12": pack(b"\3", _hello("example.com", tls12=True)),
        "split-records": pack(b"\3", h, bytes([5, 1, 200])),
        "with-leftover": pack(b"\3", h + b"\x17\x03\x03\x00\x01x"),
        "truncated": pack(b"\3", h[:100]),
        "http": pack(b"\3", b"GET / HTTP/1.1\r\n\r\n"),
    }


HARNESS = Harness("clienthello", run, (HboneError,), seeds, max_len=8192)
