"""The HTTP/2 frame buffer (zero-copy, with the plain-DATA fast path) against h2's stock `FrameBuffer` as the
oracle: for any split of any byte stream it yields the same frames; it may refuse an oversized frame sooner
(from its header alone) but never accepts what the stock buffer refuses. Its errors are h2's `ProtocolError` and
hyperframe's `InvalidPaddingError`, which `receive_data` (h2's and ours) turns into a PROTOCOL_ERROR GOAWAY."""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.exceptions
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import DataFrame

from hbone.net.h2framebuffer import PlainData, ZeroCopyFrameBuffer
from tests.fuzz.harness import Bytes, Harness, chunks, pack

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
    ours = ZeroCopyFrameBuffer(server=server, plain_data=bool(opts & 2))
    stock = FrameBuffer(server=server)
    ours.max_frame_size = stock.max_frame_size = _MAX_FRAME[(opts >> 2) & 3]
    got, err = _drain(ours, list(chunks(payload, sizes)))
    want, stock_err = _drain(stock, [payload])
    if err is None:
        assert stock_err is None, f"stock buffer refuses ({stock_err!r}) what ours accepts"
        assert got == want, "different frames"
    else:
        assert want[: len(got)] == got, "different frames before the error"
        if stock_err is None:
            assert isinstance(err, h2.exceptions.FrameTooLargeError), f"ours refuses ({err!r}) what stock accepts"
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
