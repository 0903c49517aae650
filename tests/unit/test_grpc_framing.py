"""gRPC Length-Prefixed-Message framing: round trips, limits, bad input, compression (PROTOCOL-HTTP2.md)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.errors import GrpcStatus, HboneError, LimitExceeded, ProtocolError
from hbone.grpc.framing import (
    MessageDecoder,
    UnsupportedEncoding,
    choose_encoding,
    compress,
    decompress,
    encode_message,
    message_prefix,
    parse_accept_encoding,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def test_prefix_layout() -> None:
    assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_message(b"") == b"\x00\x00\x00\x00\x00"
    assert message_prefix(0x01020304, compressed=True) == b"\x01\x01\x02\x03\x04"


def test_compress_without_encoding_sends_flag_zero() -> None:
    # The spec forbids flag 1 without a Message-Encoding header.
    assert encode_message(b"x", compress=True) == b"\x00\x00\x00\x00\x01x"
    assert encode_message(b"x", compress=True, encoding="identity") == b"\x00\x00\x00\x00\x01x"


@settings(max_examples=300)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    encoding=st.sampled_from([None, "identity", "gzip", "deflate"]),
    compress_mask=st.integers(min_value=0, max_value=255),
)
def test_round_trip_any_split(payloads: list[bytes], cuts: list[int], encoding: str | None, compress_mask: int) -> None:
    wire = b"".join(
        encode_message(p, compress=bool(compress_mask >> (i % 8) & 1), encoding=encoding)
        for i, p in enumerate(payloads)
    )
    dec = MessageDecoder(encoding=encoding)
    got: list[bytes] = []
    for chunk in split_at(wire, cuts):
        got += dec.feed(chunk)
    assert got == payloads
    assert dec.pending_bytes == 0
    dec.close()


def test_feed_accepts_memoryview_and_bytearray() -> None:
    wire = encode_message(b"one") + encode_message(b"two")
    dec = MessageDecoder()
    assert dec.feed(memoryview(wire)[:6]) == []
    assert dec.feed(bytearray(wire[6:])) == [b"one", b"two"]


def test_returned_messages_are_independent_of_input_buffer() -> None:
    buf = bytearray(encode_message(b"hello"))
    dec = MessageDecoder()
    [msg] = dec.feed(buf)
    buf[5:] = b"XXXXX"
    assert msg == b"hello"


def test_one_byte_at_a_time_and_pending() -> None:
    wire = encode_message(b"a" * 10) + encode_message(b"b" * 3)
    dec = MessageDecoder()
    got = []
    for i in range(len(wire)):
        got += dec.feed(wire[i : i + 1])
        if i == 3:
            assert dec.pending_bytes == 4
    assert got == [b"a" * 10, b"b" * 3]


def test_large_message_across_many_chunks_compacts() -> None:
    payload = os.urandom(300_000)
    wire = encode_message(b"x") + encode_message(payload) + encode_message(b"tail")
    dec = MessageDecoder()
    got = []
    for i in range(0, len(wire), 16_384):
        got += dec.feed(wire[i : i + 16_384])
    assert got == [b"x", payload, b"tail"]


@pytest.mark.parametrize("wire", [b"\x00", b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x05abc"])
def test_truncated_message_on_close(wire: bytes) -> None:
    dec = MessageDecoder()
    assert dec.feed(wire) == []
    with pytest.raises(ProtocolError, match="stream ended inside a message") as ei:
        dec.close()
    assert ei.value.grpc_status is GrpcStatus.INTERNAL


def test_length_over_limit_is_resource_exhausted_before_body_arrives() -> None:
    dec = MessageDecoder(max_message_size=100)
    with pytest.raises(LimitExceeded) as ei:
        dec.feed(message_prefix(101))
    assert str(ei.value) == "Received message larger than max (101 vs. 100)"
    assert ei.value.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED
    # Poisoned: the framing can no longer be trusted.
    with pytest.raises(LimitExceeded):
        dec.feed(b"\x00")
    with pytest.raises(LimitExceeded):
        dec.close()


def test_exactly_at_limit_is_fine() -> None:
    dec = MessageDecoder(max_message_size=10)
    assert dec.feed(encode_message(b"0123456789")) == [b"0123456789"]


@pytest.mark.parametrize("flag", [2, 0x80, 0xFF])
def test_bad_flag(flag: int) -> None:
    dec = MessageDecoder(encoding="gzip")
    with pytest.raises(ProtocolError, match="invalid compressed flag") as ei:
        dec.feed(bytes([flag]) + b"\x00\x00\x00\x00")
    assert ei.value.grpc_status is GrpcStatus.INTERNAL


def test_compressed_flag_without_encoding_is_internal() -> None:
    dec = MessageDecoder()
    with pytest.raises(ProtocolError, match="no grpc-encoding") as ei:
        dec.feed(b"\x01\x00\x00\x00\x01x")
    assert ei.value.grpc_status is GrpcStatus.INTERNAL


def test_unknown_encoding_is_unimplemented() -> None:
    with pytest.raises(UnsupportedEncoding) as ei:
        MessageDecoder(encoding="snappy")
    assert ei.value.grpc_status is GrpcStatus.UNIMPLEMENTED
    with pytest.raises(UnsupportedEncoding):
        encode_message(b"x", compress=True, encoding="br")


def test_gzip_interoperates_with_stdlib_both_ways() -> None:
    payload = b"hello gzip " * 50
    # Standard gzip (with mtime etc.) decodes through our decoder ...
    body = gzip.compress(payload)
    dec = MessageDecoder(encoding="gzip")
    assert dec.feed(b"\x01" + struct.pack(">I", len(body)) + body) == [payload]
    # ... and what we produce is standard gzip.
    ours = encode_message(payload, compress=True, encoding="GZIP")
    assert ours[0] == 1
    assert gzip.decompress(ours[5:]) == payload
    assert len(ours) < len(payload)


def test_deflate_is_zlib_wrapped_like_grpc_core() -> None:
    payload = b"deflate me " * 20
    assert zlib.decompress(compress(payload, "deflate")) == payload
    assert decompress(zlib.compress(payload), "deflate", 1000) == payload


def test_uncompressed_message_on_gzip_stream() -> None:
    dec = MessageDecoder(encoding="gzip")
    assert dec.feed(encode_message(b"plain")) == [b"plain"]


def test_gzip_bomb_is_bounded() -> None:
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    dec = MessageDecoder(max_message_size=1024 * 1024, encoding="gzip")
    with pytest.raises(LimitExceeded, match="after decompression") as ei:
        dec.feed(b"\x01" + struct.pack(">I", len(bomb)) + bomb)
    assert ei.value.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED


def test_decompressed_exactly_at_limit() -> None:
    body = gzip.compress(b"a" * 1000)
    assert decompress(body, "gzip", 1000) == b"a" * 1000
    with pytest.raises(LimitExceeded):
        decompress(body, "gzip", 999)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not gzip at all", "failed to decompress"),
        (gzip.compress(b"abcdef" * 10)[:-12], "truncated"),
        (gzip.compress(b"x") + b"junk", "trailing data"),
    ],
)
def test_corrupt_gzip_is_internal(body: bytes, match: str) -> None:
    dec = MessageDecoder(encoding="gzip")
    with pytest.raises(ProtocolError, match=match) as ei:
        dec.feed(b"\x01" + struct.pack(">I", len(body)) + body)
    assert ei.value.grpc_status is GrpcStatus.INTERNAL


@settings(max_examples=500)
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=10),
    encoding=st.sampled_from([None, "gzip", "deflate"]),
)
def test_garbage_only_raises_package_errors(chunks: list[bytes], encoding: str | None) -> None:
    dec = MessageDecoder(max_message_size=1000, encoding=encoding)
    try:
        for c in chunks:
            for m in dec.feed(c):
                assert len(m) <= 1000
        dec.close()
    except HboneError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_garbage_compressed_bodies_only_raise_package_errors(body: bytes) -> None:
    for enc in ("gzip", "deflate"):
        dec = MessageDecoder(max_message_size=1000, encoding=enc)
        try:
            dec.feed(b"\x01" + struct.pack(">I", len(body)) + body)
        except HboneError:
            pass


def test_accept_encoding_helpers() -> None:
    assert parse_accept_encoding("gzip, Deflate,identity,gzip") == ("gzip", "deflate", "identity")
    assert parse_accept_encoding(None) == ()
    assert choose_encoding(["gzip"], ["identity", "gzip"]) == "gzip"
    assert choose_encoding(["snappy", "deflate"], ["snappy", "deflate"]) == "deflate"
    assert choose_encoding(["gzip"], ["identity"]) is None


def test_grpcio_message_limit_text() -> None:
    # grpc-core formats the limit error as "Received message larger than max (%u vs. %d)".
    dec = MessageDecoder(max_message_size=4 * 1024 * 1024)
    with pytest.raises(LimitExceeded, match=r"^Received message larger than max \(4194305 vs\. 4194304\)$"):
        dec.feed(message_prefix(4 * 1024 * 1024 + 1))
