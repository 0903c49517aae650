"""PROXY protocol v2 headers (the inbound side of a waypoint/ztunnel hop), fed in arbitrary reads: a parsed
header must re-encode to bytes that parse to the same header, and its identity TLVs must read cleanly."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.proxyv2 import MAX_LENGTH, ProxyV2Reader, local_header, proxy_header
from tests.fuzz.harness import Bytes, Harness, chunks, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    reader = ProxyV2Reader(max_length=min(64 << (opts & 15), MAX_LENGTH))
    header = None
    for piece in chunks(payload, sizes):
        got = reader.feed(piece)
        if got is not None:
            assert header is None, "a header returned twice"
            header = got
    if header is None:
        return
    again = ProxyV2Reader(MAX_LENGTH).feed(header.encode())
    assert again == header, (header, again)
    _ = (header.client_identity, header.service_hostname)
    header.spiffe_id  # noqa: B018  (IdentityError when the TLV is not a SPIFFE id)


def seeds() -> dict[str, bytes]:
    full = proxy_header(
        ("10.0.0.1", 4567),
        ("10.0.0.2", 80),
        client_identity="spiffe://cluster.local/ns/default/sa/sleep",
        service_hostname="reviews.default.svc.cluster.local",
    )
    return {
        "ztunnel": pack(b"\4", full + b"first bytes"),
        "v6": pack(b"\4", proxy_header(("fd00::1", 1), ("fd00::2", 2), tlvs=[(0xEE, b"x" * 40)])),
        "local": pack(b"\4", local_header()),
        "bytewise": pack(b"\4", full, b"\1"),
        "bad-identity": pack(b"\4", proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), client_identity="not-spiffe")),
        "v1": pack(b"\4", b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"),
    }


HARNESS = Harness("proxyv2", run, (HboneError,), seeds, max_len=8192)
