"""W3C baggage (the HBONE peer-metadata header): decode, and decoded members must encode and decode to the same."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.baggage import PeerMetadata, decode_baggage, encode_baggage
from tests.fuzz.harness import Bytes, Harness, pack, text_of


def run(data: bytes) -> None:
    b = Bytes(data)
    flavour = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    values = [text_of(part, flavour) for part in b.rest().split(b"\n")]
    members = decode_baggage(values)
    assert decode_baggage(encode_baggage(members)) == members
    peer = PeerMetadata.from_baggage(values)
    if not peer.is_empty():
        PeerMetadata.from_baggage(peer.to_baggage())


def seeds() -> dict[str, bytes]:
    peer = PeerMetadata(
        cluster="Kubernetes",
        namespace="default",
        workload_name="reviews-v1",
        service_name="reviews",
        service_version="v1",
        region="r1",
        zone="z1",
    )
    return {
        "istio": pack(b"\0", peer.to_baggage().encode()),
        "cronjob": pack(b"\0", PeerMetadata(workload_type="cronjob", workload_name="db").to_baggage().encode()),
        "encoded": pack(b"\0", encode_baggage({"a_b": "c,d;e=f% g", "x": "\u00fc"}).encode()),
        "properties": pack(b"\0", b"key1=value1;property1;property2, key2 = value2\nkey3=v3"),
        "empty-members": pack(b"\0", b",,,a=b,,"),
        "bad-percent": pack(b"\1", b"a=%zz,b=%c3"),
        "empty": pack(b"\0", b""),
    }


HARNESS = Harness("baggage", run, (HboneError,), seeds)
