"""The native HTTP/2 engine's frame and HPACK parsing against the h2-backed engine as the oracle: arbitrary bytes
after a valid preface (server) or after opening streams (client), cut into arbitrary reads for the native engine,
must give the same events, the same error and GOAWAY code, byte-identical output and the same windows and stream
states (tests/unit/h2_twin.py compares them). Only whole frames are fed: where a frame is cut by the end of the
input, an engine may refuse it from its header before its body arrives (ours does, for oversized frames).

A crash is a difference between the engines (AssertionError) or any exception out of either engine that is not
its documented `hbone.errors.ProtocolError` (the twin turns those into compared outcomes)."""

from __future__ import annotations

import hpack

from tests.fuzz.harness import Bytes, Harness, pack, whole_frames
from tests.unit.h2_twin import GRPC_REQUEST, PREFACE, REQUEST, RESPONSE, Twin, frame


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = whole_frames(b.rest())
    client = bool(opts & 1)
    twin = Twin(client=client)
    if client:
        twin.both(lambda e: e.open_stream(REQUEST, False))
        twin.both(lambda e: e.open_stream(GRPC_REQUEST, bool(opts & 2)))
    cuts: list[int] = []
    for size in sizes:
        cuts.append((cuts[-1] if cuts else 0) + size)
    twin.receive((b"" if client else PREFACE) + payload, cuts)
    if twin.failed or not opts & 4:
        return
    # Commands on whatever streams exist now, then the same input once more (stream ids already used).
    for sid in sorted(twin.sids):
        twin.both(lambda e, sid=sid: e.credit(sid, 70_000))
        if not client:
            twin.both(lambda e, sid=sid: e.send_headers(sid, RESPONSE, bool(opts & 8)))
    twin.receive(payload, cuts)


def seeds() -> dict[str, bytes]:
    request = hpack.Encoder().encode(REQUEST)
    response = hpack.Encoder().encode(RESPONSE)
    settings = frame(4, 0, 0, b"")
    tunnel = settings + frame(1, 0x4, 1, request) + frame(0, 0, 1, b"x" * 100) + frame(0, 0x1, 1, b"")
    return {
        "server-tunnel": pack(b"\x04", tunnel),
        "server-tunnel-split": pack(b"\x04", tunnel, bytes([1, 9, 30, 3])),
        "server-continuation": pack(b"\x00", settings + frame(1, 0x1, 1, request[:2]) + frame(9, 0x4, 1, request[2:])),
        "server-padded-priority": pack(
            b"\x04", settings + frame(1, 0x2C, 1, b"\x02" + bytes(4) + b"\x10" + request + b"\x00\x00")
        ),
        "server-window-overflow": pack(
            b"\x00", settings + frame(1, 0x4, 1, request) + frame(8, 0, 1, (2**31 - 1).to_bytes(4, "big"))
        ),
        "client-response": pack(b"\x05", settings + frame(1, 0x4, 1, response) + frame(0, 0x1, 1, b"ok")),
        "client-trailers": pack(
            b"\x01",
            settings + frame(1, 0x4, 3, response) + frame(1, 0x5, 3, hpack.Encoder().encode([(b"grpc-status", b"0")])),
        ),
        "client-push": pack(b"\x01", settings + frame(5, 0x4, 1, (2).to_bytes(4, "big") + response)),
        "bad-settings": pack(b"\x00", frame(4, 0, 0, b"\x00\x04\x80\x00\x00\x00")),
    }


HARNESS = Harness("h2_native", run, (), seeds, max_len=8192)
