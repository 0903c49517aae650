"""The native engine's HPACK encoder (`hbone.net.h2.native_hpack.Encoder`) against hpack's decoder and ours: the
input is a sequence of header blocks and SETTINGS_HEADER_TABLE_SIZE changes (tests/unit/hpack_peer.py checks
them). Every block must decode to what was encoded on both decoders, credentials as never-indexed, and after every
block the peer's dynamic table must equal the encoder's model of it and stay within what the peer allows.

A crash is any difference or any exception: the encoder has no error to raise."""

from __future__ import annotations

from hpack import NeverIndexedHeaderTuple

from hbone.net.h2.native_hpack import Encoder
from tests.fuzz.harness import Bytes, Harness
from tests.unit.hpack_peer import Block, Peer

# Names that take each path of the indexing rule: static-table names, credentials, tracing ids, changing values,
# ordinary names (indexed on their second use).
NAMES = (
    b":method", b":authority", b":path", b":status", b"content-type", b"authorization", b"cookie", b"traceparent",
    b"grpc-timeout", b"content-length", b"baggage", b"x-a", b"x-b", b"x-c",
)  # fmt: skip
# Table sizes around the edges: none, below one entry (32), the 1/4 rule, the default, above our 4096.
SIZES = (0, 1, 31, 32, 33, 64, 100, 128, 255, 1000, 1024, 4095, 4096, 4097, 65_536)


def _block(b: Bytes, count: int) -> Block:
    block: Block = []
    for _ in range(count):
        pick = b.byte()
        name = NAMES[pick % len(NAMES)] if pick < 240 else b.take(b.byte() % 8)
        length = b.byte()
        value = b.take(length % 32) if length < 250 else b"v" * (length * 7)  # a few big ones: 1750-1785 bytes
        block.append(NeverIndexedHeaderTuple(name, value) if pick & 0x80 and pick < 160 else (name, value))
    return block


def run(data: bytes) -> None:
    b = Bytes(data)
    encoder = Encoder(huffman=b.flag())
    peer = Peer()
    for _ in range(64):
        if not b.remaining:
            break
        op = b.byte()
        if op < 32:
            peer.allow(SIZES[op % len(SIZES)], encoder)
        else:
            peer.check(_block(b, op % 8), encoder)


def seeds() -> dict[str, bytes]:
    def field(name: int, value: bytes) -> bytes:
        return bytes([name, len(value)]) + value

    connect = bytes([36]) + field(0, b"CONNECT") + field(1, b"10.0.0.1:80") + field(10, b"k=v") + field(7, b"00-1")
    # The first byte: Huffman or not; then operations.
    return {
        "connect-three-times": b"\x00" + connect * 3,
        "lowered-then-raised": b"\x01" + connect * 2 + bytes([4, 9]) + connect,
        "zero-table": b"\x00" + bytes([0]) + connect * 2,
        "credentials": b"\x00" + (bytes([34]) + field(5, b"Bearer t") + field(6, b"s=1")) * 3,
        "big-fields": b"\x00" + bytes([33, 11, 250]) * 4,
    }


HARNESS = Harness("hpack_encoder", run, (), seeds, max_len=4096)
