"""The HTTP/2 frame buffer (zero-copy, with the plain-DATA fast path) against h2's stock `FrameBuffer` as the
oracle: for any split of a stream of whole frames it yields the same frames and the same error; a frame whose
body has not fully arrived may be refused sooner (from its header) or later. Its errors are h2's `ProtocolError` and
hyperframe's `InvalidPaddingError`, which `receive_data` (h2's and ours) turns into a PROTOCOL_ERROR GOAWAY."""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.exceptions
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import DataFrame

from hbone.net.h2.framebuffer import PlainData, ZeroCopyFrameBuffer
from tests.fuzz.harness import Bytes, Harness, chunks, pack, whole_frames

_MAX_FRAME = (16_384, 100, 1 << 20, 0)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _norm(frame: Any) -> list[tuple[Any, ...]]:
    if isinstance(frame, PlainData):
        out = []
        for i, view in enumerate(frame.views):
            end = i == 0 and bool(frame.flags & 1)
            out.append(("DATA", frame.stream_id, end, bytes(view)))
        return out
    if isinstance(frame, DataFrame) and "PADDED" not in frame.flags:
        return [("DATA", frame.stream_id, "END_STREAM" in frame.flags, bytes(frame.data))]
    return [(type(frame).__name__, frame.stream_id, frame.serialize())]


_ERRORS = (h2.exceptions.ProtocolError, InvalidPaddingError)


def _drain(buf: Any, pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], Exception | None]:
    frames: list[tuple[Any, ...]] = []
    try:
        for piece in pieces:
            buf.add_data(piece)
            for frame in buf:
                frames += _norm(frame)  # before the next add_data: PlainData views die with the read
    except _ERRORS as exc:
        return frames, exc
    return frames, None


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    payload = b.rest()
    server = bool(opts & 1)

    def drain(buf: Any, pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], Exception | None]:
        buf.max_frame_size = _MAX_FRAME[(opts >> 2) & 3]
        return _drain(buf, pieces)

    whole = whole_frames(payload, len(PREFACE) if server and payload.startswith(PREFACE) else 0)
    got, err = drain(ZeroCopyFrameBuffer(server=server, plain_data=bool(opts & 2)), list(chunks(whole, sizes)))
    want, stock_err = drain(FrameBuffer(server=server), [whole])
    assert got == want, "different frames"
    assert (err is None) == (stock_err is None), f"ours: {err!r}, stock: {stock_err!r}"
    if type(err) is not type(stock_err):  # a frame both too large and malformed: either error is right (§5.4.1)
        assert isinstance(err, h2.exceptions.FrameTooLargeError), f"ours: {err!r}, stock: {stock_err!r}"
    # With the partial frame at the end too: no other errors, and the same frames before it.
    more, _ = drain(ZeroCopyFrameBuffer(server=server, plain_data=bool(opts & 2)), list(chunks(payload, sizes)))
    assert more[: len(got)] == got, "different frames once a partial frame follows"
    if err is not None:
        raise err


def _client_bytes() -> bytes:
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    conn.send_data(1, b"a" * 100)
    conn.send_data(1, b"b" * 10, pad_length=5)
    conn.send_data(1, b"c", end_stream=True)
    conn.ping(b"12345678")
    conn.increment_flow_control_window(1000)
    conn.send_headers(3, [(":method", "CONNECT"), (":authority", "x" * 200 + ":1")], end_stream=True)
    conn.reset_stream(3)
    return conn.data_to_send()


def _continuation() -> bytes:
    headers = b"\x00\x00\x01\x01\x00\x00\x00\x00\x05\x82"  # HEADERS without END_HEADERS
    cont = b"\x00\x00\x01\x09\x04\x00\x00\x00\x05\x84"
    return headers + cont * 3


def seeds() -> dict[str, bytes]:
    flow = _client_bytes()
    return {
        "client": pack(b"\3", flow),
        "client-split": pack(b"\3", flow, bytes([1, 9, 10, 100])),
        "client-stock-path": pack(b"\1", flow, b"\7"),
        "small-frames": pack(b"\x07", flow),
        "continuation": pack(b"\2", _continuation()),
        "oversized-header": pack(b"\2", b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 50),
        "bad-preface": pack(b"\3", b"PRI * HTTP/1.1\r\n"),
        "pad-too-long": pack(b"\2", b"\x00\x00\x01\x00\x08\x00\x00\x00\x01\x05"),
        "data-stream0": pack(b"\2", b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"),
    }


HARNESS = Harness("h2_framebuffer", run, _ERRORS, seeds, max_len=8192)
