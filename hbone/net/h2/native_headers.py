"""A received header block (HEADERS plus any CONTINUATION frames) in the native engine: stream rules, events.

Kept apart from the frame loop because it is the one place that decides what a block is (request, response,
informational response, trailers) from the stream's state, and what a block on a stream in the wrong state costs:
following h2 (the test oracle), a block on a stream we reset is answered with RST_STREAM(STREAM_CLOSED), on a
stream the peer ended it is a STREAM_CLOSED connection error, and on a half-closed (remote) stream it resets the
stream. The block is always decoded first, whatever happens next, so both HPACK tables stay in step.
"""

from __future__ import annotations

from hbone.errors import H2ErrorCode
from hbone.net.h2 import native_frames as nf
from hbone.net.h2.api import (
    ControlFrame,
    Event,
    HeaderList,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hbone.net.h2.native_hpack import REQUEST, RESPONSE, TRAILERS, check_received, is_informational
from hbone.net.h2.native_streams import CLOSED, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, OPEN, Connection, Stream

_INFORMATIONAL = -1  # a 1xx response: checked, then dropped


def _bad(message: str, code: int = H2ErrorCode.PROTOCOL_ERROR) -> Exception:
    return nf.conn_error(code, message)


def receive_block(
    engine: Connection, flags: int, sid: int, block: bytes | memoryview, *, depends: int | None, events: list[Event]
) -> None:
    """Handle a complete header block received on `sid` (`flags` of its HEADERS frame)."""
    end = bool(flags & nf.END_STREAM)
    stream = engine.streams.get(sid)
    if stream is None and sid not in engine.closed and engine.open_in >= engine.settings.max_concurrent_streams:
        raise _bad(f"over our limit of {engine.settings.max_concurrent_streams} streams")
    headers = engine.codec.decode(block)
    engine.idle = False
    informational = is_informational(headers)
    if stream is None:
        stream = _new_stream(engine, sid)
        if stream is None:
            return
        if informational:
            raise _bad("informational response opening a stream")
        kind = REQUEST
    elif informational:
        if end or stream.state not in (OPEN, HALF_CLOSED_LOCAL) or stream.headers_received:
            raise _bad(f"informational response in the wrong place on stream {sid}")
        kind = _INFORMATIONAL
    elif stream.state == HALF_CLOSED_REMOTE:
        engine.reset_on_error(stream, H2ErrorCode.STREAM_CLOSED)
        events.append(StreamReset(sid, H2ErrorCode.STREAM_CLOSED, False))
        return
    elif not stream.headers_received:
        stream.headers_received = True
        kind = RESPONSE
    elif stream.trailers_received:
        raise _bad(f"a third header block on stream {sid}")
    else:
        stream.trailers_received = True
        kind = TRAILERS
    if informational and end:
        raise _bad("informational response with END_STREAM")
    stream.expected_length = 0 if stream.head_request else _content_length(headers)
    if kind == TRAILERS and not end:
        raise _bad(f"trailers without END_STREAM on stream {sid}")
    checked = check_received(headers, RESPONSE if kind == _INFORMATIONAL else kind)
    if kind == REQUEST:
        events.append(RequestReceived(sid, checked, end))
    elif kind == RESPONSE:
        events.append(ResponseReceived(sid, checked, end))
    elif kind == TRAILERS:
        events.append(TrailersReceived(sid, checked))
    if end:
        stream.end_remote()
        events.append(StreamEnded(sid))
        if stream.state == CLOSED:
            engine.retire(stream)
    if depends is not None:
        if depends == sid:
            raise _bad(f"stream {sid} depends on itself")
        events.append(ControlFrame(sid))


def _new_stream(engine: Connection, sid: int) -> Stream | None:
    """The stream a block opens; None when it is a closed stream's and RST_STREAM answered it."""
    if sid in engine.closed:
        if engine.closed_by_reset(sid):
            nf.rst_stream(engine.out, sid, H2ErrorCode.STREAM_CLOSED)
            return None
        raise _bad(f"header block on closed stream {sid}", H2ErrorCode.STREAM_CLOSED)
    if engine.seen(sid):
        raise _bad(f"stream id {sid} is lower than one already used")
    if engine.is_local_id(sid):
        raise _bad(f"stream id {sid} has our parity")
    return engine.new_stream(sid, False)


def _content_length(headers: HeaderList) -> int | None:
    """The block's content-length (RFC 9113 §8.1.1), checked as h2 does: digits only, all copies equal."""
    length = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise _bad(f"invalid content-length {value!r}")
            parsed = int(value)
            if length is not None and parsed != length:
                raise _bad(f"conflicting content-length {length} and {parsed}")
            length = parsed
    return length
