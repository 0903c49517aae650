"""gRPC length-prefixed messages (the incremental decoder of every call), plain and compressed: the messages a
stream yields must not depend on where its DATA frames were cut, and never exceed the size limit."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.grpc.framing import MessageDecoder, compress, encode_message
from tests.fuzz.harness import Bytes, Harness, chunks, pack

_ENCODINGS = (None, "gzip", "deflate", "identity")


def _decode(payload: bytes, sizes: bytes, limit: int, encoding: str | None) -> list[bytes]:
    decoder = MessageDecoder(limit, encoding)
    out: list[bytes] = []
    for piece in chunks(payload, sizes):
        out += decoder.feed(piece)
    decoder.close()
    return out


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    limit = (16, 1024, 65536, 4 << 20)[opts & 3]
    encoding = _ENCODINGS[(opts >> 2) & 3]
    try:
        whole = _decode(payload, b"", limit, encoding)
    except HboneError as exc:
        try:
            _decode(payload, sizes, limit, encoding)
        except HboneError as again:
            assert type(again) is type(exc), (exc, again)
            raise
        raise AssertionError(f"one read fails with {exc!r}, split reads do not") from None
    assert _decode(payload, sizes, limit, encoding) == whole
    assert all(len(m) <= limit for m in whole)


def seeds() -> dict[str, bytes]:
    two = encode_message(b"hello") + encode_message(b"")
    gz = encode_message(b"x" * 1000, compress=True, encoding="gzip")
    bomb = b"\x01" + (len(z := compress(b"\0" * 100_000, "gzip"))).to_bytes(4, "big") + z
    return {
        "two": pack(b"\1", two),
        "split": pack(b"\1", two * 3, b"\1\2\3"),
        "gzip": pack(b"\5", gz),
        "deflate": pack(b"\x09", encode_message(b"y" * 300, compress=True, encoding="deflate")),
        "gzip-bomb": pack(b"\5", bomb),
        "too-long": pack(b"\0", encode_message(b"z" * 17)),
        "bad-flag": pack(b"\1", b"\x02\0\0\0\0"),
        "compressed-no-encoding": pack(b"\1", gz),
        "truncated": pack(b"\1", two[:-3] + b"\0\0"),
    }


HARNESS = Harness("grpc_framing", run, (HboneError,), seeds, max_len=16384)
