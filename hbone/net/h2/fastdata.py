"""DATA frames in both directions without h2's general per-frame machinery (h2tuning item 10).

Why: after items 1-9, a bulk tunnel still paid ~10 µs of Python per 64 KiB DATA frame on each side (hyperframe
frame objects and flag sets, h2's connection and stream state machines with enum hashing, event lists), which
kept one tunnel stream well below a plain TLS stream (RESULTS-hbone.md, round 4).

The fast paths handle only the common case, and only when h2 itself would accept the frame with no effect other
than window accounting and one `DataReceived` event (receive) or one frame in the outbound buffer (send):

- receive: the connection is open, the stream exists in OPEN or HALF_CLOSED_LOCAL with its headers received, no
  content-length to track against, no END_STREAM, no padding, and both inbound windows cover the payload. Such
  frames that follow each other on one stream within one read become one DataReceived with their joined payload
  (one copy, as h2 would make of each), so the application handles a read's worth of bytes once, not per frame;
- send: the connection is open, the stream is OPEN or HALF_CLOSED_REMOTE, no END_STREAM, no padding, and the
  payload fits both outbound windows and the peer's frame size;
- credit (`acknowledge_received_data`): the stream is open and neither its window nor the connection's is due
  for a WINDOW_UPDATE after these bytes (h2 would only count them);
- the `:status 200` that opens every tunnel (`send_status_200`): a server stream in OPEN or HALF_CLOSED_REMOTE
  that has not answered yet, and no pending HPACK table size update. Its header block is the single byte 0x88
  (static table index 8, RFC 7541 Appendix A) whatever the dynamic table holds; h2's state machines still run.

Everything else — the first frame of a stream's end, errors, frames on closed or unknown streams, flow-control
violations — is handed to h2's own code unchanged, so its events, errors and RST_STREAM/GOAWAY answers stay
h2's. `conn` is a `hbone.net.h2.tuning.TunedH2Connection` (typed Any: that module imports this one).
`tests/unit/test_net_h2fastdata.py` drives connections with these paths and with h2's own code through the
same random frame sequences, read splits, sends and credits, requires identical events (consecutive data events
folded), errors, windows, stream states and output bytes, and fails if the h2 transitions or attributes relied
on here change.
"""

from __future__ import annotations

from typing import Any

from h2.connection import ConnectionInputs, ConnectionState
from h2.events import DataReceived, Event
from h2.stream import StreamInputs, StreamState
from hyperframe.frame import DataFrame

from hbone.net.h2.framebuffer import FRAME_HEADER, PlainData

_END_STREAM = 0x1
_CONN_OPEN = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})
# Stream states in which h2's transition for the input is (no side effect but a DataReceived event, same state).
_RECV_OPEN = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
# ... and in which h2's SEND_DATA transition is (None, same state).
_SEND_OPEN = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})


def accept_plain_data(conn: Any, item: PlainData, size: int) -> bool:
    """Do what h2's `_receive_data_frame` does to the windows for the unpadded DATA frames of `item` (`size` bytes
    in all), when that is all it would do besides DataReceived events; False (and nothing changed): the frames
    must go through h2, one by one."""
    sid, flags, _ = item
    stream: Any = conn.streams.get(sid)
    if (
        stream is None
        or flags & _END_STREAM
        or conn.state_machine.state not in _CONN_OPEN
        or stream.state_machine.state not in _RECV_OPEN
        or not stream.state_machine.headers_received
        or stream._expected_content_length is not None
    ):
        return False
    conn_window = conn._inbound_flow_control_window_manager
    stream_window = stream._inbound_window_manager
    if size > conn_window.current_window_size or size > stream_window.current_window_size:
        return False  # h2 takes the frames that fit, then raises the FlowControlError
    conn_window.current_window_size -= size
    stream_window.current_window_size -= size
    stream._actual_content_length += size
    return True


def data_event(stream_id: int, data: bytes, size: int) -> DataReceived:
    """The DataReceived h2 would emit for `size` flow-controlled bytes carrying `data`."""
    # Built without __init__: h2 4.1/4.2 take no arguments there, 4.3+ (dataclasses) take keywords.
    event: DataReceived = _new_event(DataReceived)
    event.stream_id = stream_id
    event.data = data
    event.flow_controlled_length = size
    event.stream_ended = None
    return event


def general_frames(conn: Any, item: PlainData, quiet: type[DataFrame]) -> list[Event]:
    """Hand DATA frames that are not plain to h2's own per-frame code, in order."""
    events: list[Event] = []
    for view in item.views:
        events += conn._receive_frame(_as_frame(item.stream_id, item.flags, view, quiet))
    return events


_new_event = object.__new__


def _as_frame(stream_id: int, flags: int, payload: memoryview, quiet: type[DataFrame]) -> DataFrame:
    """The frame hyperframe would have parsed (`DataFrame.parse_body` for an unpadded body)."""
    frame = quiet(stream_id)
    frame.parse_flags(flags)
    frame.data = payload.tobytes()
    frame.body_len = len(frame.data)
    return frame


def send_plain_data(conn: Any, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
    """`conn.send_data(stream_id, b"".join(pieces))` (`size` bytes) without END_STREAM or padding: one DATA frame,
    each piece copied once, into the outbound buffer (h2 would copy a memoryview and the join first)."""
    out = _data_frame(conn, stream_id, size)
    if out is None:
        conn.send_data(stream_id, b"".join(pieces))  # h2 decides, and raises its own errors
        return
    for piece in pieces:
        out += piece


def _data_frame(conn: Any, stream_id: int, size: int) -> bytearray | None:
    """Account `size` bytes against both outbound windows and queue a DATA frame header for them; the caller
    appends the payload to the returned buffer. None (and nothing changed) when h2 must decide."""
    stream: Any = conn.streams.get(stream_id)
    if (
        stream is None
        or conn.state_machine.state not in _CONN_OPEN
        or stream.state_machine.state not in _SEND_OPEN
        or size > conn.outbound_flow_control_window
        or size > stream.outbound_flow_control_window
        or size > conn.max_outbound_frame_size
    ):
        return None
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    out: bytearray = conn._data_to_send
    out += FRAME_HEADER.pack(size >> 8, size & 0xFF, 0, 0, stream_id)
    return out


def acknowledge_counted(conn: Any, size: int, stream_id: int) -> bool:
    """Count `size` consumed bytes on both inbound windows when that is all h2 would do; False: call h2."""
    stream: Any = conn.streams.get(stream_id)
    if stream is None or size <= 0 or stream_id <= 0 or not stream.open:
        return False
    conn_window = conn._inbound_flow_control_window_manager
    stream_window = stream._inbound_window_manager
    conn_total = conn_window._bytes_processed + size
    stream_total = stream_window._bytes_processed + size
    if conn_window.due(conn_total) or stream_window.due(stream_total):
        return False
    conn_window._bytes_processed = conn_total
    stream_window._bytes_processed = stream_total
    return True


STATUS_200 = [(b":status", b"200")]
_STATUS_200_FRAME = FRAME_HEADER.pack(0, 1, 0x1, 0x4, 0)[:5]  # HEADERS, END_HEADERS, 1 byte; stream id follows
_STATUS_200_BLOCK = b"\x88"


def send_status_200(conn: Any, stream_id: int) -> bool:
    """Send `:status: 200` (no END_STREAM) on a server stream as h2 would; False: call h2's send_headers."""
    stream: Any = conn.streams.get(stream_id)
    if (
        stream is None
        or conn.config.client_side
        or conn.state_machine.state is not ConnectionState.SERVER_OPEN
        or stream.state_machine.state not in _SEND_OPEN
        or stream.state_machine.headers_sent
        or conn.encoder.header_table.resized
    ):
        return False
    conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(StreamInputs.SEND_HEADERS)  # h2's response_sent: headers_sent = True
    stream.request_method = None  # what h2's send_headers stores for a response block
    out = conn._data_to_send
    out += _STATUS_200_FRAME
    out += stream_id.to_bytes(4, "big")
    out += _STATUS_200_BLOCK
    return True
