"""The frame layer of the native engine: RFC 9113 §4 frame headers and §6 frame bodies, as plain functions.

Why functions and tuples rather than frame objects: a tunnel's hot path is DATA in and out, and one object per
frame (hyperframe builds one, plus a flag set) was most of the per-frame cost in h2. The receive loop in
`native_conn` unpacks the 9-byte header with one `struct` call and slices payloads itself; the helpers here parse the
rarer control frames and build outgoing frames straight into the output `bytearray`.

Error codes follow h2 (the test oracle, tests/unit/test_h2_native_diff.py), which is stricter or looser than the
RFC in a few places, noted where they are: a body of the wrong size is FRAME_SIZE_ERROR, a frame on the wrong
stream class (stream 0 or not) is PROTOCOL_ERROR as soon as its header arrives, padding as long as the body is
PROTOCOL_ERROR.
"""

from __future__ import annotations

import struct

from hbone.errors import H2ErrorCode, ProtocolError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6; ALTSVC is RFC 7838).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
ALTSVC = 0xA

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers (RFC 9113 §6.5.2, RFC 8441).
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535

#: 24-bit length as (u16, u8), type, flags, stream id (reserved bit included: callers mask it).
FRAME_HEADER = struct.Struct(">HBBBL")
_U32 = struct.Struct(">L")
_U32X2 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")

# Frame types that must carry a stream id, and those that must not (hyperframe's stream association).
NEEDS_STREAM = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})
NO_STREAM = frozenset({SETTINGS, PING, GOAWAY})


def conn_error(code: int, message: str) -> ProtocolError:
    """A connection error carrying its GOAWAY code (the engine queues the GOAWAY before raising it)."""
    exc = ProtocolError(message)
    exc.h2_code = H2ErrorCode(code)
    return exc


def frame_size_error(what: str, size: int) -> ProtocolError:
    return conn_error(H2ErrorCode.FRAME_SIZE_ERROR, f"{what} frame with a {size}-byte body")


def check_association(ftype: int, sid: int) -> None:
    """Stream 0 for connection frames, a stream for stream frames (checked from the header alone)."""
    if sid == 0 and ftype in NEEDS_STREAM:
        raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"frame type {ftype} on stream 0")
    if sid != 0 and ftype in NO_STREAM:
        raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"frame type {ftype} on stream {sid}")


def strip_padding(body: memoryview, flags: int) -> tuple[memoryview, int]:
    """The body without its Pad Length byte and padding (RFC 9113 §6.1), and the offset of what remains.

    Padding that is as long as the rest of the frame is PROTOCOL_ERROR (§6.1 says "greater than or equal")."""
    if not flags & PADDED:
        return body, 0
    if not body:
        raise frame_size_error("padded", 0)
    pad = body[0]
    if pad and pad >= len(body):
        raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"padding of {pad} bytes in a {len(body)}-byte frame")
    return body[1 : len(body) - pad], 1


def headers_fragment(body: memoryview, flags: int) -> tuple[memoryview, int | None]:
    """A HEADERS body's block fragment and, with the PRIORITY flag, the stream it depends on."""
    if not flags & (PADDED | PRIORITY_FLAG):
        return body, None
    pad = 0
    rest = body
    if flags & PADDED:
        if not body:
            raise frame_size_error("padded HEADERS", 0)
        pad = body[0]
        rest = body[1:]
    depends = None
    if flags & PRIORITY_FLAG:
        if len(rest) < 5:
            raise frame_size_error("HEADERS with priority", len(body))
        depends = _U32.unpack_from(rest)[0] & 0x7FFFFFFF
    # h2 compares the padding with the body after the Pad Length byte (priority fields included).
    if pad and pad >= len(rest):
        raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"padding of {pad} bytes in a {len(body)}-byte frame")
    start = 5 if depends is not None else 0
    return rest[start : max(start, len(rest) - pad)], depends


def parse_settings(body: memoryview, flags: int) -> list[tuple[int, int]]:
    if flags & ACK:
        if body:  # h2: PROTOCOL_ERROR (RFC 9113 §6.5 says FRAME_SIZE_ERROR)
            raise conn_error(H2ErrorCode.PROTOCOL_ERROR, "SETTINGS ACK with a body")
        return []
    if len(body) % 6:
        raise frame_size_error("SETTINGS", len(body))
    return [_SETTING.unpack_from(body, i) for i in range(0, len(body), 6)]


def parse_window_update(body: memoryview) -> int:
    if len(body) != 4:
        raise frame_size_error("WINDOW_UPDATE", len(body))
    increment: int = _U32.unpack_from(body)[0]  # h2 does not mask the reserved bit: it makes the value invalid
    if not 1 <= increment <= MAX_WINDOW:
        raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE increment {increment}")
    return increment


def parse_u32(body: memoryview, what: str) -> int:
    if len(body) != 4:
        raise frame_size_error(what, len(body))
    value: int = _U32.unpack_from(body)[0]
    return value


def parse_goaway(body: memoryview) -> tuple[int, int, bytes]:
    if len(body) < 8:
        raise frame_size_error("GOAWAY", len(body))
    last, code = _U32X2.unpack_from(body)
    return last & 0x7FFFFFFF, code, body[8:].tobytes()


def check_altsvc(body: memoryview) -> None:
    if len(body) < 2 or len(body) < 2 + int.from_bytes(body[:2], "big"):
        raise frame_size_error("ALTSVC", len(body))


# --- building frames ------------------------------------------------------------------------------------------


def frame(out: bytearray, ftype: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> None:
    size = len(payload)
    out += FRAME_HEADER.pack(size >> 8, size & 0xFF, ftype, flags, sid)
    out += payload


def settings_frame(out: bytearray, values: list[tuple[int, int]]) -> None:
    frame(out, SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def header_block(out: bytearray, sid: int, block: bytes, end_stream: bool, max_frame: int) -> None:
    """HEADERS (and CONTINUATION frames when the block is larger than the peer's frame size)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        frame(out, HEADERS, flags | END_HEADERS, sid, block)
        return
    chunks = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    frame(out, HEADERS, flags, sid, chunks[0])
    for chunk in chunks[1:-1]:
        frame(out, CONTINUATION, 0, sid, chunk)
    frame(out, CONTINUATION, END_HEADERS, sid, chunks[-1])


def rst_stream(out: bytearray, sid: int, code: int) -> None:
    frame(out, RST_STREAM, 0, sid, _U32.pack(code))


def window_update(out: bytearray, sid: int, increment: int) -> None:
    out += FRAME_HEADER.pack(0, 4, WINDOW_UPDATE, 0, sid)
    out += _U32.pack(increment)


def goaway(out: bytearray, last: int, code: int, debug: bytes) -> None:
    frame(out, GOAWAY, 0, 0, _U32X2.pack(last, code) + debug)
