"""A received header block (HEADERS plus any CONTINUATION frames) in the native engine: stream rules, events.

Kept apart from the frame loop because it is the one place that decides what a block is (request, response,
informational response, trailers) from the stream's state, and what a block on a stream in the wrong state costs:
following h2 (the test oracle), a block on a stream we reset is answered with RST_STREAM(STREAM_CLOSED), on a
stream the peer ended it is a STREAM_CLOSED connection error, and on a half-closed (remote) stream it resets the
stream. The block is always decoded first, whatever happens next, so both HPACK tables stay in step.
"""

from __future__ import annotations

import re
from typing import Any

from hpack import NeverIndexedHeaderTuple

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
from hbone.net.h2.native_streams import CLOSED, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, OPEN, Connection, Stream

# Kinds of received header block (h2's HeaderValidationFlags, folded into one value).
REQUEST = 0
RESPONSE = 1  # final or informational response
TRAILERS = 2
_INFORMATIONAL = -1  # a 1xx response: checked, then dropped

_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]").search
_WS = (0x20, 0x09)
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
_REQUEST_ONLY = frozenset({b":scheme", b":path", b":authority", b":method", b":protocol"})


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


def is_informational(headers: HeaderList) -> bool:
    """A `:status` of 1xx among the leading pseudo-headers (h2 stops looking at the first regular field)."""
    for name, value in headers:
        if not name.startswith(b":"):
            return False
        if name == b":status":
            return value.startswith(b"1")
    return False


def check_received(headers: HeaderList, kind: int) -> HeaderList:
    """The block as the application gets it (cookies joined), or a PROTOCOL_ERROR connection error."""
    cookies: list[bytes] = []
    out: HeaderList = []
    seen: set[bytes] = set()
    regular = False
    method = authority = host = None
    for header in headers:
        name, value = header
        if not name:
            raise _bad("empty header name")
        if _BAD_NAME(name) is not None or name.find(b":", 1) != -1:
            raise _bad(f"illegal header name {name!r}")
        # Bytes as ints (NUL, LF, CR): `b"\x00" in value` first tries the byte as an index, raises and clears a
        # TypeError (~0.8 us a test, nine a CONNECT request); an int goes straight to memchr.
        if value and (0 in value or 10 in value or 13 in value):
            raise _bad(f"illegal value of header {name!r}")
        if name == b"cookie":  # h2 moves the crumbs to the end, joined, before it checks anything else
            cookies.append(value)
            continue
        if value and (value[0] in _WS or value[-1] in _WS):
            raise _bad(f"whitespace around the value of header {name!r}")
        if name[0] == 0x3A:  # ':'
            if name in seen or regular or name not in _PSEUDO:
                raise _bad(f"pseudo-header {name!r} duplicated, out of sequence or unknown")
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and kind == REQUEST:
                raise _bad("empty :path")
        else:
            regular = True
            if name in _CONNECTION_HEADERS:
                raise _bad(f"connection-specific header {name!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise _bad(f"te: {value!r}")
            if name == b"host":
                if host is not None and kind == REQUEST:
                    raise _bad("several host headers")
                host = value
        out.append(header)
    _check_pseudo(seen, method, kind)
    if kind == REQUEST:
        if authority is None and host is None:
            raise _bad("request without :authority or host")
        if authority is not None and host is not None and authority != host:
            raise _bad(":authority and host differ")
    if cookies:
        joined = b"; ".join(cookies)
        if joined and (joined[0] in _WS or joined[-1] in _WS):
            raise _bad("whitespace around the value of header b'cookie'")
        out.append(NeverIndexedHeaderTuple(b"cookie", joined))
    return out


def _check_pseudo(seen: set[bytes], method: Any, kind: int) -> None:
    if kind == TRAILERS:
        if seen:
            raise _bad("pseudo-header in trailers")
        return
    if kind == RESPONSE:
        if b":status" not in seen or seen & _REQUEST_ONLY:
            raise _bad("response without :status or with request pseudo-headers")
        return
    if b":method" not in seen or b":status" in seen:
        raise _bad("request without :method or with :status")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            raise _bad("CONNECT with :scheme or :path")
    elif b":scheme" not in seen or b":path" not in seen:
        raise _bad("request without :scheme or :path")
    if not connect and b":protocol" in seen:
        raise _bad(":protocol outside CONNECT")
