"""The native HTTP/2 engine: `hbone.net.h2.api.Engine` on our own frame layer, for the HBONE and gRPC profile.

Why: with h2, a tunnel paid for a generic library on every frame (frame objects, enum-keyed state tables, event
objects per step, header validation in generator chains); its HEADERS path alone was ~20% of a tunnel's CPU.
This engine does the same protocol work with struct unpacking, one dispatch on the frame type and plain stream
records, and builds output straight into one `bytearray`.

What it does not do, because no HBONE or gRPC peer needs it: server push (we advertise ENABLE_PUSH 0, so a
PUSH_PROMISE is a PROTOCOL_ERROR), sending priorities, informational responses' events (1xx blocks are checked and
dropped, as the API says). Behaviour otherwise follows h2 as the driver used it (graceful GOAWAY: no state change
on either side of one), including h2's error codes where they differ from the RFC's letter;
tests/unit/test_h2_native_diff.py runs both engines on the same bytes and commands and compares everything.
"""

from __future__ import annotations

from collections.abc import Callable

from hbone.errors import ProtocolError
from hbone.net.h2 import native_frames as nf
from hbone.net.h2.api import (
    Event,
    HeaderList,
    StreamClosed,
)
from hbone.net.h2.native_hpack import HeaderCodec
from hbone.net.h2.native_receive import Receiver
from hbone.net.h2.native_streams import (
    BY_RESET,
    CLOSED,
    HALF_CLOSED_REMOTE,
    OPEN,
    SEND_RST_STREAM,
    Stream,
    Window,
    credit_due,
)
from hbone.net.settings import H2Settings

_MAX_STREAM_ID = 2**31 - 1
_MAX_CLOSED = 2**16  # closed streams remembered for the errors of late frames (h2's MAX_CLOSED_STREAMS)
_UNLIMITED_STREAMS = 2**32 + 1  # h2's value for a peer that did not set SETTINGS_MAX_CONCURRENT_STREAMS
_SEND_OPEN = (OPEN, HALF_CLOSED_REMOTE)
_unpack_header = nf.FRAME_HEADER.unpack_from
_pack_header = nf.FRAME_HEADER.pack


class NativeEngine:
    """One connection's HTTP/2 state (client or server side)."""

    def __init__(self, *, client: bool, settings: H2Settings) -> None:
        self.client = client
        self.settings = settings
        self.out = bytearray()
        self.streams: dict[int, Stream] = {}  # streams not closed yet
        self.closed: dict[int, int | None] = {}  # closed stream id -> how it closed (oldest first, bounded)
        self.highest_in = 0
        self.highest_out = 0
        self.open_in = 0  # open streams the peer started (checked against our SETTINGS_MAX_CONCURRENT_STREAMS)
        self.idle = True  # before the first HEADERS either way: DATA and RST_STREAM are protocol errors then
        self.recv_window = Window(nf.DEFAULT_WINDOW)
        self.conn_send_window = nf.DEFAULT_WINDOW
        self.peer: dict[int, int] = {}  # the peer's SETTINGS, as received
        self.peer_initial_window = nf.DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        self.codec = HeaderCodec(2 * settings.max_header_list_size, settings.huffman_headers)
        self.divisor = settings.window_update_divisor
        self._receiver = Receiver(self)
        #: Received bytes in, events out: the receiver's own method, not a method passing the call on (this runs
        #: for every read).
        self.receive: Callable[[memoryview], list[Event]] = self._receiver.receive

    # --- connection ------------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        if self.client:
            self.out += nf.PREFACE
        nf.settings_frame(
            self.out,
            [
                (nf.HEADER_TABLE_SIZE, s.header_table_size),
                (nf.ENABLE_PUSH, 0),
                (nf.INITIAL_WINDOW_SIZE, s.initial_stream_window),
                (nf.MAX_FRAME_SIZE, s.max_frame_size),
                (nf.ENABLE_CONNECT_PROTOCOL, 0),
                (nf.MAX_CONCURRENT_STREAMS, s.max_concurrent_streams),
                (nf.MAX_HEADER_LIST_SIZE, s.max_header_list_size),
            ],
        )
        if s.connection_window > nf.DEFAULT_WINDOW:
            increment = s.connection_window - nf.DEFAULT_WINDOW
            self.recv_window.open_by(increment)
            nf.window_update(self.out, 0, increment)

    def fail(self, exc: ProtocolError) -> None:
        """A connection error: GOAWAY with its code, naming the last stream the peer started."""
        nf.goaway(self.out, self.highest_in, int(exc.h2_code), b"")

    # --- streams -------------------------------------------------------------------------------------------

    def new_stream(self, sid: int, local: bool) -> Stream:
        stream = Stream(sid, local, self.peer_initial_window, self.settings.initial_stream_window)
        self.streams[sid] = stream
        if local:
            self.highest_out = sid
        else:
            self.highest_in = sid
            self.open_in += 1
        return stream

    def retire(self, stream: Stream) -> None:
        """A stream reached CLOSED: keep only how it closed."""
        sid = stream.stream_id
        if self.streams.pop(sid, None) is None:
            return
        if not stream.local:
            self.open_in -= 1
        closed = self.closed
        closed[sid] = stream.closed_by
        if len(closed) > _MAX_CLOSED:
            del closed[next(iter(closed))]

    def is_local_id(self, sid: int) -> bool:
        return (sid & 1) == self.client

    def seen(self, sid: int) -> bool:
        """Whether `sid` is at or below the highest stream id used so far by the side that owns it."""
        return sid <= (self.highest_out if self.is_local_id(sid) else self.highest_in)

    def closed_by_reset(self, sid: int) -> bool:
        return self.closed.get(sid) in BY_RESET

    def reset_on_error(self, stream: Stream, code: int) -> None:
        """A stream error found in received frames: the stream is closed and RST_STREAM queued."""
        stream.close(SEND_RST_STREAM)
        self.retire(stream)
        nf.rst_stream(self.out, stream.stream_id, code)

    def _stream(self, sid: int) -> Stream:
        stream = self.streams.get(sid)
        if stream is not None:
            return stream
        if sid in self.closed or (sid > 0 and self.seen(sid)):
            raise StreamClosed(f"stream {sid} is closed")
        raise ProtocolError(f"no stream {sid}")

    # --- commands ------------------------------------------------------------------------------------------

    def open_stream(self, headers: HeaderList, end_stream: bool) -> int:
        sid = self.highest_out + 2 if self.highest_out else (1 if self.client else 2)
        if sid > _MAX_STREAM_ID:
            raise ProtocolError("stream ids exhausted")
        self._open(sid, headers, end_stream)
        return sid

    def _open(self, sid: int, headers: HeaderList, end_stream: bool) -> None:
        if len(self.streams) - self.open_in + 1 > self.peer_max_concurrent_streams:
            raise ProtocolError(f"peer allows {self.peer_max_concurrent_streams} streams")
        self.idle = False
        stream = self.new_stream(sid, True)
        self._send_block(stream, headers, end_stream)

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        if stream_id not in self.streams and self.is_local_id(stream_id) and stream_id > self.highest_out:
            self._open(stream_id, headers, end_stream)  # as h2 does: headers on a new id of ours open it
            return
        stream = self._stream(stream_id)
        if stream.state not in _SEND_OPEN:
            raise self._invalid(stream, "send headers")
        if stream.headers_sent and not end_stream:
            raise ProtocolError("trailers must end the stream")
        if not stream.local and not stream.headers_sent:
            final = True
            for name, value in headers:
                if name == b":status":
                    final = not value.startswith(b"1")
                    break
            if not final and end_stream:
                raise ProtocolError("an informational response cannot end the stream")
            stream.headers_sent = final
        self._send_block(stream, headers, end_stream)

    def _send_block(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        method = None
        for name, value in headers:
            if name == b":method":
                method = value
                break
        stream.head_request = method == b"HEAD"
        nf.header_block(self.out, stream.stream_id, self.codec.encode(headers), end_stream, self.peer_max_frame)
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or size > stream.send_window
            or size > self.conn_send_window
            or size > self.peer_max_frame
            or stream.state not in _SEND_OPEN
        ):
            self._refuse_data(stream_id, size)
            return
        stream.send_window -= size
        self.conn_send_window -= size
        out = self.out
        out += _pack_header(size >> 8, size & 0xFF, nf.DATA, 0, stream_id)
        for piece in pieces:
            out += piece

    def _refuse_data(self, stream_id: int, size: int) -> None:
        stream = self._stream(stream_id)  # StreamClosed / ProtocolError for streams we do not have
        if size > min(stream.send_window, self.conn_send_window):
            raise ProtocolError(f"cannot send {size} bytes: window is {self.send_window(stream_id)}")
        if size > self.peer_max_frame:
            raise ProtocolError(f"cannot send a {size}-byte frame: the peer's limit is {self.peer_max_frame}")
        raise self._invalid(stream, "send data")

    def _invalid(self, stream: Stream, what: str) -> ProtocolError:
        """A command the stream's state does not allow. Like h2, the stream is closed by it (with no reason
        recorded): the driver lost track of it, and a stream in an unknown state must not carry on."""
        state = stream.state
        stream.state = CLOSED
        self.retire(stream)
        return ProtocolError(f"stream {stream.stream_id} cannot {what} in state {state}")

    def end_stream(self, stream_id: int) -> None:
        if self.idle:
            raise ProtocolError("no stream was opened")
        stream = self._stream(stream_id)
        if stream.state not in _SEND_OPEN:
            raise self._invalid(stream, "end")
        self.out += _pack_header(0, 0, nf.DATA, nf.END_STREAM, stream_id)
        self._end_local(stream)

    def _end_local(self, stream: Stream) -> None:
        stream.end_local()
        if stream.state == CLOSED:
            self.retire(stream)

    def reset_stream(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # closed already, or never opened: nothing to reset (the API's contract)
        stream.close(SEND_RST_STREAM)
        self.retire(stream)
        nf.rst_stream(self.out, stream_id, code)

    def credit(self, stream_id: int, size: int) -> None:
        if size <= 0:
            return
        increment = self.recv_window.credit(size, self.divisor)
        if increment:
            nf.window_update(self.out, 0, increment)
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # closed or unknown: only the connection's credit matters now
        processed = stream.processed + size
        due = credit_due(processed, stream.recv_window, stream.recv_max, self.divisor)
        if due is None:
            stream.processed = processed
            return
        stream.processed = 0
        stream.recv_window += due
        if due:
            nf.window_update(self.out, stream_id, due)

    def goaway(self, code: int, last_stream_id: int | None = None, debug: bytes = b"") -> None:
        nf.goaway(self.out, self.highest_in if last_stream_id is None else last_stream_id, code, debug)

    def ping(self, opaque: bytes) -> None:
        if len(opaque) != 8:
            raise ProtocolError("PING payload must be 8 bytes")
        nf.frame(self.out, nf.PING, 0, 0, opaque)

    # --- state ---------------------------------------------------------------------------------------------

    def send_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self._stream(stream_id)  # raises StreamClosed or ProtocolError
        return min(stream.send_window, self.conn_send_window)

    @property
    def highest_inbound_stream_id(self) -> int:
        return self.highest_in

    @property
    def max_send_frame(self) -> int:
        return self.peer_max_frame

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self.peer.get(nf.MAX_CONCURRENT_STREAMS, _UNLIMITED_STREAMS)

    @property
    def peer_max_header_list_size(self) -> int | None:
        return self.peer.get(nf.MAX_HEADER_LIST_SIZE)

    def stream_state(self, stream_id: int) -> int | None:
        """The stream's state number (h2's numbering), CLOSED for closed ones, None for unknown ids."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream.state
        return CLOSED if stream_id in self.closed else None

    # --- output --------------------------------------------------------------------------------------------

    def pending(self) -> int:
        return len(self.out)

    def take_output(self) -> bytes | bytearray:
        data = self.out
        self.out = bytearray()
        return data
