"""The receive side of the native engine: bytes in, frames out of them, one dispatch on the type, events.

The loop works on the caller's buffer: a frame that arrived whole is handled from a slice of it (nothing copied
but a DATA payload, once, into its event); only a frame cut by the end of a read is kept, and completed from the
next read before the loop continues there. Header-level checks (stream class, frame size against our
SETTINGS_MAX_FRAME_SIZE) run as soon as 9 bytes are there, so a peer cannot make us buffer an oversized frame.

Plain DATA on an open stream (no padding, no END_STREAM, no content-length to track, windows that cover it) is
handled inline; consecutive such frames of one stream within one read become one `DataReceived` with their
joined payload. Everything else goes through `Receiver.frame`.
"""

from __future__ import annotations

from hbone.errors import H2ErrorCode, ProtocolError
from hbone.net.h2 import native_frames as nf
from hbone.net.h2.api import (
    ControlFrame,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcked,
    SettingsAcked,
    SettingsChanged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from hbone.net.h2.native_headers import receive_block
from hbone.net.h2.native_streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    HALF_CLOSED_REMOTE,
    OPEN,
    RECV_RST_STREAM,
    Connection,
    Stream,
)

_unpack_header = nf.FRAME_HEADER.unpack_from
_RECV_OPEN = (OPEN, HALF_CLOSED_LOCAL)
_CONTINUATION_BACKLOG = 64  # frames of one header block (h2's limit)
_new_data_event = object.__new__


class Receiver:
    """Parses one connection's received bytes; owned by its `NativeEngine` (typed as the `Connection` protocol)."""

    __slots__ = ("_block", "_dead", "_engine", "_preface", "_settings_seen", "_tail")

    def __init__(self, engine: Connection) -> None:
        self._engine = engine
        self._tail = bytearray()  # the start of a frame cut by the end of the last read
        self._preface = b"" if engine.client else nf.PREFACE  # what is still expected of the client preface
        self._block: list[object] | None = None  # header block awaiting CONTINUATION: [type, flags, sid, parts, dep]
        self._settings_seen = False
        self._dead: ProtocolError | None = None

    def receive(self, data: memoryview) -> list[Event]:
        if self._dead is not None:
            raise self._dead
        events: list[Event] = []
        try:
            if self._preface:
                data = self._check_preface(data)
            first = None
            if self._tail:
                first, data = self._complete_tail(data)
            end = self._frames(data, events, first)
            if end < len(data):
                self._check_header(data, end)
                self._tail = bytearray(data[end:])
        except ProtocolError as exc:
            self._dead = exc
            self._engine.fail(exc)
            raise
        return events

    def _check_preface(self, data: memoryview) -> memoryview:
        want = self._preface
        take = min(len(want), len(data))
        if data[:take] != want[:take]:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "invalid HTTP/2 connection preface")
        self._preface = want[take:]
        return data[take:]

    def _complete_tail(self, data: memoryview) -> tuple[memoryview | None, memoryview]:
        """Complete the frame cut by the last read from `data`: (that frame if it is whole now, the rest of data)."""
        tail = self._tail
        if len(tail) < 9:
            take = 9 - len(tail)
            tail += data[:take]
            data = data[take:]
            if len(tail) < 9:
                return None, data
            self._check_header(memoryview(tail), 0)
        take = 9 + ((tail[0] << 16) | (tail[1] << 8) | tail[2]) - len(tail)
        tail += data[:take]
        if take > len(data):
            return None, data[len(data) :]
        self._tail = bytearray()
        return memoryview(tail), data[take:]

    def _check_header(self, data: memoryview, pos: int) -> None:
        if len(data) - pos < 9:
            return
        hi, lo, ftype, _, sid = _unpack_header(data, pos)
        nf.check_association(ftype, sid & 0x7FFFFFFF)
        size = (hi << 8) | lo
        if size > self._engine.settings.max_frame_size:
            raise nf.conn_error(H2ErrorCode.FRAME_SIZE_ERROR, f"{size}-byte frame over our limit")

    def _frames(self, received: memoryview, events: list[Event], first: memoryview | None = None) -> int:
        """Handle the whole frames in `received`, after `first` (the frame the last read cut, completed by this one);
        returns where the first incomplete frame of `received` starts.

        `first` goes through the same loop so that its DATA and the next frames' of the same stream become one
        event: handled apart, every read that ended inside a DATA frame (most reads of a bulk stream) made two
        events, so two writes onward (RESULTS-hbone.md round 6)."""
        engine = self._engine
        streams = engine.streams
        max_size = engine.settings.max_frame_size
        conn = engine.recv_window
        run: DataReceived | None = None  # the event of consecutive plain DATA frames of one stream
        parts: list[memoryview] = []
        pos = end = 0
        for data in (received,) if first is None else (first, received):
            pos = 0
            end = len(data)
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = _unpack_header(data, pos)
                size = (hi << 8) | lo
                if pos + 9 + size > end:
                    break
                sid &= 0x7FFFFFFF
                body = data[pos + 9 : pos + 9 + size]
                pos += 9 + size
                if ftype == nf.DATA and not flags & 0x9 and self._block is None and sid and size <= max_size:
                    stream = streams.get(sid)
                    if (
                        stream is not None
                        and stream.state in _RECV_OPEN
                        and stream.headers_received
                        and stream.expected_length is None
                        and size <= conn.current
                        and size <= stream.recv_window
                    ):
                        conn.current -= size
                        stream.recv_window -= size
                        stream.actual_length += size
                        if run is not None and run.stream_id == sid:
                            parts.append(body)
                            run.flow += size
                            continue
                        if run is not None:
                            run.data = _joined(parts)
                        run = _new_data_event(DataReceived)
                        run.stream_id = sid
                        run.flow = size
                        parts = [body]
                        events.append(run)
                        continue
                if run is not None:
                    run.data = _joined(parts)
                    run = None
                nf.check_association(ftype, sid)
                if size > max_size:
                    raise nf.conn_error(H2ErrorCode.FRAME_SIZE_ERROR, f"{size}-byte frame over our limit")
                self.frame(ftype, flags, sid, body, events)
        if run is not None:  # the views point into the caller's buffer: copied before we return
            run.data = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)  # _joined(), inline: every read
        return pos

    # --- one frame ------------------------------------------------------------------------------------------

    def frame(self, ftype: int, flags: int, sid: int, body: memoryview, events: list[Event]) -> None:
        engine = self._engine
        block = self._block
        if ftype == nf.CONTINUATION and block is not None and block[2] == sid:
            parts = block[3]
            assert isinstance(parts, list)
            parts.append(body.tobytes())
            if len(parts) > _CONTINUATION_BACKLOG:
                raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "too many CONTINUATION frames")
            self._check_block_size(parts)
            if flags & nf.END_HEADERS:
                self._block = None
                if block[0] == nf.PUSH_PROMISE:
                    raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE received (we disable push)")
                first_flags = block[1]
                assert isinstance(first_flags, int)
                depends = block[4]
                assert depends is None or isinstance(depends, int)
                receive_block(engine, first_flags, sid, b"".join(parts), depends=depends, events=events)
            return
        if ftype == nf.DATA:
            payload, _ = nf.strip_padding(body, flags)
            self._no_block()
            self._data(flags, sid, payload, len(body), events)
        elif ftype == nf.HEADERS:
            fragment, depends = nf.headers_fragment(body, flags)
            self._no_block()
            if flags & nf.END_HEADERS:
                receive_block(engine, flags, sid, fragment, depends=depends, events=events)
            else:
                self._block = [ftype, flags, sid, [fragment.tobytes()], depends]
                self._check_block_size([fragment])
        elif ftype == nf.WINDOW_UPDATE:
            increment = nf.parse_window_update(body)
            self._no_block()
            self._window_update(sid, increment, events)
        elif ftype == nf.RST_STREAM:
            code = nf.parse_u32(body, "RST_STREAM")
            self._no_block()
            self._rst_stream(sid, code, events)
        elif ftype == nf.SETTINGS:
            values = nf.parse_settings(body, flags)
            self._no_block()
            if flags & nf.ACK:
                events.append(SettingsAcked())
            else:
                self._settings(dict(values), events)
        elif ftype == nf.PING:
            if len(body) != 8:
                raise nf.frame_size_error("PING", len(body))
            self._no_block()
            if flags & nf.ACK:
                events.append(PingAcked(body.tobytes()))
            else:
                nf.frame(engine.out, nf.PING, nf.ACK, 0, body)
                events.append(ControlFrame(0))
        elif ftype == nf.GOAWAY:
            last, code, debug = nf.parse_goaway(body)
            self._no_block()
            events.append(GoAwayReceived(code, last, debug))
        elif ftype == nf.PRIORITY:
            if len(body) != 5:
                raise nf.frame_size_error("PRIORITY", len(body))
            depends = nf.parse_u32(body[:4], "PRIORITY") & 0x7FFFFFFF
            self._no_block()
            if depends == sid:
                raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"stream {sid} depends on itself")
            events.append(ControlFrame(sid))
        elif ftype == nf.PUSH_PROMISE:
            self._push_promise(flags, sid, body)
        elif ftype == nf.CONTINUATION:
            self._no_block()
            self._naked_continuation(sid)
        else:
            if ftype == nf.ALTSVC:
                nf.check_altsvc(body)
                engine.idle = False  # h2: an ALTSVC opens the connection state (as a client's)
            self._no_block()  # unknown frame types are ignored (RFC 9113 §5.5), but not inside a header block

    def _check_block_size(self, parts: list[bytes] | list[memoryview]) -> None:
        """Bound what an unfinished header block may hold. h2's only bound was 64 frames, i.e. 64 MiB per
        connection with our 1 MiB frames, buffered before HPACK could refuse it (a CONTINUATION flood). A block
        over 4x the decoder's header list limit cannot decode within that limit (a Huffman code is at most 30
        bits per byte, a field's 32 bytes of overhead are never encoded), so it is refused as soon as it grows
        past that: ENHANCE_YOUR_CALM, as hpack answers an oversized list."""
        size = sum(map(len, parts))
        limit = 8 * self._engine.settings.max_header_list_size
        if size > limit:
            raise nf.conn_error(H2ErrorCode.ENHANCE_YOUR_CALM, f"header block over {limit} bytes")

    def _no_block(self) -> None:
        if self._block is not None:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "frame inside a header block")

    def _data(self, flags: int, sid: int, payload: memoryview, flow: int, events: list[Event]) -> None:
        engine = self._engine
        if engine.idle:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "DATA before any HEADERS")
        if not engine.recv_window.consume(flow):
            raise nf.conn_error(H2ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = engine.streams.get(sid)
        if stream is None or stream.state == HALF_CLOSED_REMOTE:
            if stream is None and sid not in engine.closed and not engine.seen(sid):
                raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            # Nobody will consume it: its connection credit goes back at once, then RST_STREAM (as h2).
            increment = engine.recv_window.credit(flow, engine.divisor)
            if increment:
                nf.window_update(engine.out, 0, increment)
            if stream is not None:
                engine.reset_on_error(stream, H2ErrorCode.STREAM_CLOSED)
                events.append(StreamReset(sid, H2ErrorCode.STREAM_CLOSED, False))
            else:
                nf.rst_stream(engine.out, sid, H2ErrorCode.STREAM_CLOSED)
            return
        if not stream.headers_received:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"DATA before the headers of stream {sid}")
        stream.recv_window -= flow
        if stream.recv_window < 0:
            raise nf.conn_error(H2ErrorCode.FLOW_CONTROL_ERROR, f"DATA beyond the window of stream {sid}")
        end = bool(flags & nf.END_STREAM)
        stream.actual_length += len(payload)
        expected = stream.expected_length
        if expected is not None and (expected < stream.actual_length or (end and expected != stream.actual_length)):
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"content-length {expected} does not match the body")
        events.append(DataReceived(sid, payload.tobytes(), flow))
        if end:
            self.end_remote(stream, events)

    def end_remote(self, stream: Stream, events: list[Event]) -> None:
        stream.end_remote()
        events.append(StreamEnded(stream.stream_id))
        if stream.state == CLOSED:
            self._engine.retire(stream)

    def _window_update(self, sid: int, increment: int, events: list[Event]) -> None:
        engine = self._engine
        if not sid:
            engine.conn_send_window += increment
            if engine.conn_send_window > nf.MAX_WINDOW:
                raise nf.conn_error(H2ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            events.append(WindowUpdated(0))
            return
        stream = engine.streams.get(sid)
        if stream is None:
            if sid not in engine.closed and not engine.seen(sid):
                raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if stream.send_window + increment > nf.MAX_WINDOW:  # a stream error (RFC 9113 §6.9.1)
            engine.reset_on_error(stream, H2ErrorCode.FLOW_CONTROL_ERROR)
            events.append(StreamReset(sid, H2ErrorCode.FLOW_CONTROL_ERROR, False))
            return
        stream.send_window += increment
        events.append(WindowUpdated(sid))

    def _rst_stream(self, sid: int, code: int, events: list[Event]) -> None:
        engine = self._engine
        if engine.idle:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "RST_STREAM before any HEADERS")
        stream = engine.streams.get(sid)
        if stream is not None:
            stream.close(RECV_RST_STREAM)
            engine.retire(stream)
            events.append(StreamReset(sid, code, True))
        # A closed or unknown stream: nothing to do (as h2; RFC 9113 §6.4 would make an idle one an error).

    def _settings(self, values: dict[int, int], events: list[Event]) -> None:
        engine = self._engine
        for key, value in values.items():
            _check_setting(key, value, peer_is_client=not engine.client)
        engine.peer.update(values)
        first = not self._settings_seen
        self._settings_seen = True
        window = values.get(nf.INITIAL_WINDOW_SIZE)
        if window is not None:
            delta = window - engine.peer_initial_window
            engine.peer_initial_window = window
            for stream in engine.streams.values():
                stream.send_window += delta
                if stream.send_window > nf.MAX_WINDOW:
                    raise nf.conn_error(H2ErrorCode.FLOW_CONTROL_ERROR, "stream window over 2^31-1")
        table = values.get(nf.HEADER_TABLE_SIZE)
        if table is not None:
            engine.codec.set_encoder_table_size(table)
        frame_size = values.get(nf.MAX_FRAME_SIZE)
        if frame_size is not None:
            engine.peer_max_frame = frame_size
        events.append(SettingsChanged(first, window is not None))
        nf.frame(engine.out, nf.SETTINGS, nf.ACK, 0)

    def _push_promise(self, flags: int, sid: int, body: memoryview) -> None:
        """Parsed for its errors (as h2 would), then refused once its header block is complete: we advertise
        SETTINGS_ENABLE_PUSH 0."""
        offset = 1 if flags & nf.PADDED else 0
        if len(body) < offset + 4:
            raise nf.frame_size_error("PUSH_PROMISE", len(body))
        promised = int.from_bytes(body[offset : offset + 4], "big")
        if promised == 0 or promised % 2:
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"PUSH_PROMISE of stream {promised}")
        nf.strip_padding(body, flags)
        self._no_block()
        if not flags & nf.END_HEADERS:
            self._block = [nf.PUSH_PROMISE, flags, sid, [], None]
            return
        raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE received (we disable push)")

    def _naked_continuation(self, sid: int) -> None:
        engine = self._engine
        if sid in engine.streams or sid in engine.closed or not engine.seen(sid):
            raise nf.conn_error(H2ErrorCode.PROTOCOL_ERROR, f"CONTINUATION without HEADERS on stream {sid}")
        raise nf.conn_error(H2ErrorCode.STREAM_CLOSED, f"CONTINUATION on closed stream {sid}")


def _check_setting(key: int, value: int, peer_is_client: bool) -> None:
    code = H2ErrorCode.NO_ERROR
    if key == nf.ENABLE_PUSH:
        if value not in (0, 1) or (not peer_is_client and value != 0):
            code = H2ErrorCode.PROTOCOL_ERROR
    elif key == nf.INITIAL_WINDOW_SIZE:
        if value > nf.MAX_WINDOW:
            code = H2ErrorCode.FLOW_CONTROL_ERROR
    elif key == nf.MAX_FRAME_SIZE:
        if not 16_384 <= value <= 16_777_215:
            code = H2ErrorCode.PROTOCOL_ERROR
    elif key == nf.ENABLE_CONNECT_PROTOCOL and value not in (0, 1):
        code = H2ErrorCode.PROTOCOL_ERROR
    if code:
        raise nf.conn_error(code, f"setting {key} has invalid value {value}")


def _joined(parts: list[memoryview]) -> bytes:
    return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
