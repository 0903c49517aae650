"""ZeroCopyFrameBuffer against h2's own FrameBuffer: identical frames for any split of the same bytes, no frame
keeps a view of the caller's (reused) buffer, same errors; and guards on the h2/hyperframe internals it uses."""

from __future__ import annotations

import inspect
import itertools

import h2.connection
import h2.exceptions
import h2.frame_buffer
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.net.h2.framebuffer import ZeroCopyFrameBuffer
from hbone.net.h2.tuning import TunedH2Connection, make_h2
from hbone.net.settings import H2Settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frames() -> bytes:
    out = []
    data = DataFrame(1, b"x" * 70_000)
    out.append(data)
    padded = DataFrame(3, b"padded", flags=["PADDED", "END_STREAM"])
    padded.pad_length = 7
    out.append(padded)
    out.append(HeadersFrame(5, b"\x82\x84", flags=["END_HEADERS"]))
    out.append(HeadersFrame(7, b"\x82"))  # a header block in three pieces
    out.append(ContinuationFrame(7, b"\x84"))
    out.append(ContinuationFrame(7, b"\x86", flags=["END_HEADERS"]))
    out.append(SettingsFrame(0, {SettingsFrame.MAX_FRAME_SIZE: 1 << 20}))
    out.append(PingFrame(0, b"12345678"))
    out.append(WindowUpdateFrame(1, 1000))
    out.append(RstStreamFrame(3, 8))
    out.append(PriorityFrame(9, 1, 16))
    out.append(GoAwayFrame(0, 9, 0, b"bye"))
    ext = ExtensionFrame(0xEE, 0, 0, b"ext")
    ext.body_len = 3  # set by parse_body on receipt; serialize() relies on it
    out.append(ext)
    return b"".join(f.serialize() for f in out)


STREAM = _frames()


def _parse(buf: h2.frame_buffer.FrameBuffer, chunks: list[bytes], scribble: bool) -> list[bytes]:
    buf.max_frame_size = 1 << 20
    out: list[Frame] = []
    reused = bytearray(max(len(c) for c in chunks))  # like the driver's one read buffer
    for chunk in chunks:
        view = memoryview(reused)[: len(chunk)]
        view[:] = chunk
        buf.add_data(view)
        out.extend(buf)
        if scribble:
            reused[:] = b"\xa5" * len(reused)  # the next read overwrites the buffer
    return [f.serialize() for f in out]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_same_frames_as_stock_for_any_split_and_buffer_reuse(cuts: list[int]) -> None:
    chunks = _split(PREFACE + STREAM, cuts)
    expected = _parse(h2.frame_buffer.FrameBuffer(server=True), chunks, scribble=False)
    assert _parse(ZeroCopyFrameBuffer(server=True), chunks, scribble=True) == expected
    assert len(expected) == 11  # the three header pieces come out as one HEADERS frame; 13 frames sent


def test_one_byte_at_a_time() -> None:
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM) - 70_000)]
    expected = _parse(h2.frame_buffer.FrameBuffer(), chunks, scribble=False)
    assert _parse(ZeroCopyFrameBuffer(), chunks, scribble=True) == expected


def test_only_an_incomplete_frame_is_kept() -> None:
    buf = ZeroCopyFrameBuffer()
    buf.max_frame_size = 1 << 20
    frame = DataFrame(1, b"y" * 1000).serialize()
    buf.add_data(frame + frame[:100])
    assert len(list(buf)) == 1
    assert bytes(buf._data) == frame[:100]
    buf.add_data(frame[100:])
    assert [f.data for f in buf] == [b"y" * 1000] and not buf._data


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET / HTTP/1.1\r\n", h2.exceptions.ProtocolError),  # not the preface
        (PREFACE + DataFrame(1, b"z" * 40_000).serialize(), h2.exceptions.FrameTooLargeError),
        (PREFACE + HeadersFrame(1, b"\x82").serialize() + PingFrame(0).serialize(), h2.exceptions.ProtocolError),
    ],
)
def test_same_errors_as_stock(data: bytes, error: type[Exception]) -> None:
    for buf in (h2.frame_buffer.FrameBuffer(server=True), ZeroCopyFrameBuffer(server=True)):
        buf.max_frame_size = 16_384
        with pytest.raises(error):
            buf.add_data(data)
            list(buf)


def test_h2_internals_still_exist() -> None:
    source = inspect.getsource(h2.frame_buffer.FrameBuffer)
    for name in ("self._data", "self._preamble_len", "self._preamble", "def _validate_frame_length",
                 "def _update_header_buffer", "self.max_frame_size"):  # fmt: skip
        assert name in source
    receive = inspect.getsource(h2.connection.H2Connection.receive_data)
    assert "self.incoming_buffer.add_data(data)" in receive and "for frame in self.incoming_buffer" in receive
    assert "self.incoming_buffer = FrameBuffer(" in inspect.getsource(h2.connection.H2Connection.__init__)


def test_every_frame_copies_what_it_keeps() -> None:
    """hyperframe's parse_body must not keep the memoryview it is given (we hand it the caller's buffer)."""
    buf = bytearray(STREAM)
    view = memoryview(buf)
    pos, frames = 0, []
    while pos < len(buf):
        f, length = Frame.parse_frame_header(view[pos : pos + 9])
        f.parse_body(view[pos + 9 : pos + 9 + length])
        frames.append(f)
        pos += 9 + length
    for f in frames:
        assert not any(isinstance(v, memoryview) for v in vars(f).values()), type(f)


def test_tuned_connection_uses_it() -> None:
    for client in (True, False):
        conn = make_h2(client=client, settings=H2Settings.client())
        assert isinstance(conn, TunedH2Connection) and isinstance(conn.incoming_buffer, ZeroCopyFrameBuffer)
