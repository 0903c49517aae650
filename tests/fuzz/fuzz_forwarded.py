"""RFC 7239 `forwarded` values: parse, then read every element's parameters and validate its nodes."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.forwarded import check_node, forwarded_value, parse_forwarded
from tests.fuzz.harness import Bytes, Harness, pack, text_of


def run(data: bytes) -> None:
    b = Bytes(data)
    flavour = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    values = [text_of(part, flavour) for part in b.rest().split(b"\n")]
    for element in parse_forwarded(values):
        for node in (element.for_, element.by):
            if node is not None:
                check_node(node)
        _ = (element.host, element.proto)


def seeds() -> dict[str, bytes]:
    return {
        "ztunnel": pack(b"\0", forwarded_value(for_="10.0.0.1:4567", host="reviews:9080").encode()),
        "v6": pack(b"\0", b'for="[2001:db8:cafe::17]:4711";proto=https, for=unknown'),
        "obfuscated": pack(b"\0", b"for=_hidden;by=_SEVKISEK, for=192.0.2.43:_port"),
        "quoted-escapes": pack(b"\0", b'for="\\"a\\\\b\\"";host="x, y"\nfor=1.2.3.4'),
        "unterminated": pack(b"\0", b'for="[::1'),
        "empty": pack(b"\0", b""),
        "latin1": pack(b"\1", b"host=\xe9t\xe9"),
    }


HARNESS = Harness("forwarded", run, (HboneError,), seeds)
