"""h2's FrameBuffer without the two bulk copies of every received byte (h2tuning item 8).

Stock `h2.frame_buffer.FrameBuffer` appends each read to its own bytearray (copy 1), slices every frame body out
of it (copy 2) and hyperframe's `parse_body` copies the payload into the frame (copy 3, the one the application
keeps). In the 2-process tunnel profile (RESULTS-hbone.md) the receiver was CPU-bound at twice the TLS sink's
CPU per GB. This buffer parses frames straight from the caller's memoryview and keeps only an incomplete tail
frame (copied before `receive_data` returns, because the driver reuses its read buffer); the next read completes
that frame with a copy of just its missing bytes.

Safe because every hyperframe `parse_body` copies what it keeps out of the memoryview it is given (`.tobytes()`
or struct unpacking); `tests/unit/test_net_h2framebuffer.py` checks that for every frame type, and that the frames
produced for any split of a byte stream are identical to the stock buffer's.

With `plain_data` set (h2tuning item 10, `hbone.net.h2.fastdata`), an unpadded DATA frame outside a header block
comes out as a `PlainData` tuple instead of a hyperframe object, together with the complete unpadded DATA frames
of the same stream that directly follow it (a run ends before any other frame, and after a frame with
END_STREAM): frame headers are read with one struct unpack each, none of hyperframe's per-frame object, flag-set
and padding work is done, and the payloads are memoryviews of the bytes being parsed, which the caller must copy
before its `receive_data` returns (the driver reuses its buffer).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import Frame

_EMPTY = memoryview(b"")
#: The HTTP/2 frame header: 24-bit length as (u16, u8), type, flags, reserved bit + 31-bit stream id.
FRAME_HEADER = struct.Struct(">HBBBL")
_DATA, _END_STREAM, _PADDED = 0x0, 0x1, 0x8


class PlainData(NamedTuple):
    """Unpadded DATA frames of one stream in a row, unparsed: the stream, the first frame's flag byte (END_STREAM is
    0x1; only a run of one frame can carry it) and one payload view per frame (valid only until the
    `receive_data` call that produced them returns)."""

    stream_id: int
    flags: int
    views: list[memoryview]


def _appended(tail: bytearray, more: memoryview) -> bytearray:
    """`tail` with `more` appended, in place (amortised linear); a copy only if a view of `tail` is still alive."""
    try:
        tail += more
    except BufferError:  # an exported view (a caller kept a payload view): leave that object alone
        return tail + more
    return tail


class ZeroCopyFrameBuffer(FrameBuffer):  # type: ignore[misc]
    """A drop-in `FrameBuffer`: same frames, same errors, same CONTINUATION handling (h2's own method)."""

    _data: bytearray
    _preamble: bytes
    _preamble_len: int

    def __init__(self, server: bool = False, plain_data: bool = False) -> None:
        super().__init__(server=server)
        self.plain_data = plain_data  # yield PlainData for unpadded DATA frames (the caller must handle them)
        self._view = _EMPTY  # what is being parsed: the caller's bytes, or one frame joined from our tail
        self._pos = 0
        self._rest = _EMPTY  # the caller's bytes after that joined frame

    def add_data(self, data: Any) -> None:
        view = memoryview(data)
        if self._preamble_len:  # the client preface (RFC 9113 §3.4), exactly as stock h2 checks it
            take = min(self._preamble_len, len(view))
            if self._preamble[:take] != view[:take]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            view = view[take:]
            self._preamble_len -= take
            self._preamble = self._preamble[take:]
        self._keep_tail()  # bytes added earlier and not parsed yet come first
        tail = self._data
        self._pos = 0
        if not tail:
            self._view, self._rest = view, _EMPTY
            return
        # Frames rarely end where a read ends: complete the pending frame with just its missing bytes, then parse
        # the rest of this read in place. Appending in place keeps a frame sent in many small reads linear in its
        # size (a new `tail + view` per read re-copied the whole pending frame every time: quadratic).
        need = -1
        if len(tail) >= 9:
            need = 9 + int.from_bytes(tail[:3], "big") - len(tail)
        elif len(tail) + len(view) >= 9:
            header = bytes(tail) + view[: 9 - len(tail)].tobytes()
            need = 9 + int.from_bytes(header[:3], "big") - len(tail)
        if need < 0 or need > len(view):  # still no complete frame (or header): keep it all, parse nothing yet
            if need > len(view) or len(tail) + len(view) < 9:
                self._data = _appended(tail, view)
                self._view = self._rest = _EMPTY
                return
            need = len(view)  # several frames were left unparsed: parse them all from one joined buffer
        self._data = _appended(tail, view[:need])
        self._rest = view[need:]
        self._view = memoryview(self._data)

    def _keep_tail(self) -> None:
        """Own the unparsed rest (normally one incomplete frame); drop every view of the caller's buffer."""
        if not self._view and not self._rest:
            return  # nothing is being parsed: `_data` already holds the tail
        tail = bytearray(self._view[self._pos :])
        if self._rest:
            tail += self._rest
        self._data = tail
        self._view = self._rest = _EMPTY
        self._pos = 0

    def __next__(self) -> Frame | PlainData:
        view, pos = self._view, self._pos
        avail = len(view) - pos
        if not avail and self._rest:  # the joined frame is done: go on in the caller's bytes
            view, pos, avail = self._rest, 0, len(self._rest)
            self._view, self._pos, self._rest = view, 0, _EMPTY
        if avail < 9:
            self._keep_tail()
            if len(self._data) >= 9:  # an incomplete frame: refuse it as soon as its header is too large
                self._validate_frame_length(int.from_bytes(self._data[:3], "big"))
            raise StopIteration
        if self.plain_data and not self._headers_buffer:
            high, low, kind, flags, sid = FRAME_HEADER.unpack_from(view, pos)
            length = (high << 8) | low
            sid &= 0x7FFFFFFF
            # Anything unusual (padding, stream 0, over the size limit) takes the general path and its errors.
            limit = self.max_frame_size
            if kind == _DATA and not flags & _PADDED and sid and length <= limit:
                if avail < length + 9:
                    self._keep_tail()
                    raise StopIteration
                body = pos + 9
                pos = body + length
                views = [view[body:pos]]
                if not flags & _END_STREAM:
                    end = len(view)
                    while end - pos >= 9:  # the same stream's next complete plain frames join the run
                        high, low, kind, more, other = FRAME_HEADER.unpack_from(view, pos)
                        length = (high << 8) | low
                        if (
                            kind != _DATA
                            or more & (_PADDED | _END_STREAM)
                            or other & 0x7FFFFFFF != sid
                            or length > limit
                            or end - pos < length + 9
                        ):
                            break
                        body = pos + 9
                        pos = body + length
                        views.append(view[body:pos])
                self._pos = pos
                return PlainData(sid, flags, views)
        try:
            f, length = Frame.parse_frame_header(view[pos : pos + 9])
        except (InvalidDataError, InvalidFrameError) as err:
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        self._validate_frame_length(length)  # before waiting for the body: never buffer an oversized frame
        if avail < length + 9:
            self._keep_tail()
            raise StopIteration
        body = pos + 9
        try:
            f.parse_body(view[body : body + length])
        except InvalidDataError as err:
            raise ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        self._pos = body + length
        new_frame: Frame | None = self._update_header_buffer(f)
        return new_frame if new_frame is not None else self.__next__()
