"""h2tuning item 10 (hbone.net.h2.fastdata): the DATA and credit fast paths must be indistinguishable from h2's own
code, and these tests must fail if the h2 internals they mirror change (pinned h2>=4.1,<4.5)."""

from __future__ import annotations

import inspect
import struct
from typing import Any

import h2.connection
import h2.events
import h2.exceptions
import h2.stream
import hpack
import pytest
from h2.connection import ConnectionInputs, ConnectionState
from h2.stream import StreamInputs, StreamState
from hyperframe.frame import DataFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbone.net.h2.framebuffer import PlainData
from hbone.net.h2.tuning import TunedH2Connection, make_h2
from hbone.net.settings import H2Settings

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")]
_HEADER = struct.Struct(">HBBBL")
_STOCK_ACK = h2.connection.H2Connection.acknowledge_received_data
_STOCK_HEADERS = h2.connection.H2Connection.send_headers


def _raw_data(sid: int, flags: int, payload: bytes, pad: int = 0) -> bytes:
    body = bytes([pad]) + payload + bytes(pad) if flags & 0x8 else payload
    return _HEADER.pack(len(body) >> 8, len(body) & 0xFF, 0, flags, sid) + body


class Twin:
    """Two tuned server connections fed the same bytes: `fast` with item 10, `slow` through h2's own code."""

    def __init__(self) -> None:
        self.fast = make_h2(client=False, settings=H2Settings.server())
        self.slow = make_h2(client=False, settings=H2Settings.server())
        self.slow.incoming_buffer.plain_data = False
        for conn in (self.fast, self.slow):
            conn.initiate_connection()
        self.failed = False

    def both(self, fast: Any, slow: Any) -> Any:
        """Run one operation on each; results or exceptions must be identical, and so must every state after."""
        outcome = []
        for op in (fast, slow):
            try:
                outcome.append(("ok", _norm(_fold(op()))))
            except (h2.exceptions.H2Error, ValueError, AssertionError, KeyError) as exc:
                outcome.append(("raise", type(exc).__name__, str(exc)))
        assert outcome[0] == outcome[1]
        assert _state(self.fast) == _state(self.slow)
        assert bytes(self.fast.data_to_send()) == bytes(self.slow.data_to_send())
        if outcome[0][0] == "raise":
            self.failed = True
        return outcome[0]

    def receive(self, data: bytes) -> Any:
        return self.both(lambda: self.fast.receive_data(data), lambda: self.slow.receive_data(data))

    def send(self, sid: int, size: int) -> Any:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        return self.both(
            lambda: self.fast.send_plain_data(sid, [memoryview(payload)], size),
            lambda: self.slow.send_data(sid, payload),
        )

    def send_pieces(self, sid: int, sizes: list[int]) -> Any:
        pieces = [bytes([n % 251]) * n for n in sizes]
        joined = b"".join(pieces)
        return self.both(
            lambda: self.fast.send_plain_data(sid, [memoryview(p) for p in pieces], len(joined)),
            lambda: self.slow.send_data(sid, joined),
        )

    def respond(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> Any:
        return self.both(
            lambda: self.fast.send_headers(sid, headers, end_stream=end_stream),
            lambda: _STOCK_HEADERS(self.slow, sid, headers, end_stream=end_stream),
        )

    def ack(self, sid: int, size: int) -> Any:
        return self.both(
            lambda: self.fast.acknowledge_received_data(size, sid), lambda: _STOCK_ACK(self.slow, size, sid)
        )


def _fold(result: Any) -> Any:
    """Join DataReceived events that follow each other on one stream (the fast path delivers such a run as one
    event); applied to both sides, so what is compared is the bytes, windows and order, not the frame count."""
    if not isinstance(result, list):
        return result
    out: list[Any] = []
    for event in result:
        last = out[-1] if out else None
        if (
            isinstance(event, h2.events.DataReceived)
            and isinstance(last, h2.events.DataReceived)
            and last.stream_id == event.stream_id
            and last.stream_ended is None
        ):
            merged = h2.events.DataReceived.__new__(h2.events.DataReceived)
            merged.stream_id = event.stream_id
            merged.data = last.data + event.data
            merged.flow_controlled_length = last.flow_controlled_length + event.flow_controlled_length
            merged.stream_ended = event.stream_ended
            out[-1] = merged
        else:
            out.append(event)
    return out


def _norm(value: Any) -> Any:
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, h2.events.Event):
        return (type(value).__name__, {k: _norm(v) for k, v in sorted(vars(value).items())})
    if isinstance(value, dict):  # changed settings: ChangedSetting has no __eq__
        return {k: repr(v) for k, v in value.items()}
    return value


def _window(manager: Any) -> tuple[int, int, int]:
    return (manager.current_window_size, manager._bytes_processed, manager.max_window_size)


def _state(conn: TunedH2Connection) -> Any:
    streams = {
        sid: (
            s.state_machine.state,
            _window(s._inbound_window_manager),
            s.outbound_flow_control_window,
            s._actual_content_length,
        )
        for sid, s in conn.streams.items()
    }
    return (
        conn.state_machine.state,
        _window(conn._inbound_flow_control_window_manager),
        conn.outbound_flow_control_window,
        streams,
    )


def _client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    return client


def _opened(*sids: int, headers: list[tuple[bytes, bytes]] = REQUEST) -> tuple[Twin, h2.connection.H2Connection]:
    twin, client = Twin(), _client()
    for sid in sids:
        client.send_headers(sid, headers)
    twin.receive(bytes(client.data_to_send()))
    return twin, client


# --- deterministic cases -----------------------------------------------------------------------------------------


def test_plain_data_takes_the_fast_path_and_matches_h2() -> None:
    twin, _ = _opened(1)
    seen = []
    original = twin.fast._receive_frame
    twin.fast._receive_frame = lambda frame: seen.append(frame) or original(frame)  # type: ignore[method-assign]
    result = twin.receive(_raw_data(1, 0, b"a" * 1000) + _raw_data(1, 0x24, b"b" * 10))  # unknown flags ignored
    assert [e[0] for e in result[1]] == ["DataReceived"]
    assert seen == []  # neither frame went through h2's general per-frame path


def test_a_run_of_plain_frames_is_one_event_and_other_frames_end_it() -> None:
    twin, _ = _opened(1, 3)
    wire = b"".join(
        [
            _raw_data(1, 0, b"a" * 100),
            _raw_data(1, 0, b"b" * 200),  # joins the run
            _raw_data(3, 0, b"c" * 10),  # another stream: a new run
            _raw_data(1, 0, b"d" * 5),
            _raw_data(1, 0x8, b"p", pad=2),  # padded: through h2, after the run
            _raw_data(1, 0x1, b"end"),  # END_STREAM: through h2
        ]
    )
    twin.receive(wire)  # identical to h2 once both sides are folded
    events = twin.fast.receive_data(_raw_data(3, 0, b"x" * 7) + _raw_data(3, 0, b"y" * 8))
    assert [(type(e).__name__, e.data, e.flow_controlled_length) for e in events] == [
        ("DataReceived", b"x" * 7 + b"y" * 8, 15)
    ]
    assert isinstance(events[0].data, bytes)  # a copy: the driver reuses the buffer the views pointed into
    part = _raw_data(3, 0, b"a" * 100) + _raw_data(3, 0, b"b" * 200)
    events = twin.fast.receive_data(part[:150])  # a run cut by the end of a read is delivered up to there
    assert [e.data for e in events] == [b"a" * 100]
    events = twin.fast.receive_data(part[150:])
    assert [e.data for e in events] == [b"b" * 200]


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        (_raw_data(1, 0x1, b"end"), "END_STREAM changes the stream state"),
        (_raw_data(1, 0x8, b"pad", pad=4), "padding"),
        (_raw_data(3, 0, b"x"), "no such stream: h2 decides"),
        (_raw_data(0, 0, b"x"), "stream 0: a connection error"),
        (_raw_data(1, 0, b"y" * 70_000), "beyond both windows: FlowControlError"),
        (_raw_data(1, 0x1, b"") + _raw_data(1, 0, b"late"), "data after END_STREAM"),
        (_raw_data(1, 0, b"r" * 30_000) * 3, "a run whose third frame overflows the window: h2 takes two, then fails"),
        (_raw_data(1, 0, b"s" * 10) + _raw_data(1, 0x1, b"t") + _raw_data(1, 0, b"u"), "END_STREAM inside a run"),
    ],
)
def test_unusual_data_frames_behave_exactly_like_h2(frames: bytes, why: str) -> None:
    twin, _ = _opened(1)
    twin.receive(frames)


def test_content_length_is_still_enforced() -> None:
    twin, _ = _opened(1, headers=[*REQUEST, (b"content-length", b"3")])
    result = twin.receive(_raw_data(1, 0, b"four"))
    assert result[0] == "raise" and result[1] == "InvalidBodyLengthError"


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    twin, client = _opened(1)
    client.send_headers(3, REQUEST)
    block = bytes(client.data_to_send())
    headers_frame = bytearray(block)
    headers_frame[4] &= ~0x4  # clear END_HEADERS: a CONTINUATION must follow
    result = twin.receive(bytes(headers_frame) + _raw_data(1, 0, b"x"))
    assert result[0] == "raise"


def test_send_fast_path_writes_what_h2_writes() -> None:
    twin, _ = _opened(1)
    twin.both(
        lambda: twin.fast.send_headers(1, [(b":status", b"200")]),
        lambda: twin.slow.send_headers(1, [(b":status", b"200")]),
    )
    for size in (0, 1, 16_384, 65_535, 1):  # the last one exceeds the 65,535-byte initial window
        twin.send(1, size)
    assert twin.failed
    twin.send(3, 10)  # no such stream


def test_pieces_make_the_frame_h2_sends_for_their_concatenation() -> None:
    twin, _ = _opened(1)
    twin.respond(1, [(b":status", b"200")])
    twin.send_pieces(1, [10, 0, 20_000, 5])
    twin.send_pieces(1, [30_000, 30_000])  # beyond the remaining window: h2's FlowControlError
    assert twin.failed


def test_credit_fast_path_counts_and_then_updates_like_h2() -> None:
    twin, _ = _opened(1)
    twin.receive(_raw_data(1, 0, b"z" * 60_000))
    for _ in range(60):
        twin.ack(1, 1000)  # crosses the 1/divisor threshold somewhere: the update must match h2's
    twin.ack(1, 0)
    twin.ack(3, 5)  # unknown stream: connection window only
    twin.ack(1, -1)  # h2's ValueError


def test_status_200_fast_path_matches_h2_and_keeps_the_hpack_context() -> None:
    twin, client = _opened(1, 3, 5)
    seen = []
    original = twin.fast.encoder.encode
    twin.fast.encoder.encode = lambda headers, **kw: seen.append(headers) or original(headers, **kw)  # type: ignore[method-assign]
    result = twin.respond(1, [(b":status", b"200")])
    assert result[0] == "ok" and seen == []  # no HPACK encoder call: the fixed block went out
    twin.respond(1, [(b":status", b"200")])  # a second response on the stream: h2's error, identically
    twin.respond(3, [(b":status", b"200"), (b"baggage", b"k=v")])  # other blocks take h2's path
    twin.respond(5, [(b":status", b"200")])  # dynamic table entries before and after
    twin.respond(5, [(b"x-trailer", b"t")], end_stream=True)
    for conn in (twin.fast, twin.slow):
        conn.encoder.header_table_size = 1024  # a pending size update must go out in the next block
    client.send_headers(7, REQUEST)
    twin.receive(bytes(client.data_to_send()))
    twin.respond(7, [(b":status", b"200")])
    decoder = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    assert decoder.decoder.decode(b"\x88", raw=True) == [(b":status", b"200")]


def test_status_200_on_a_client_connection_is_h2s_business() -> None:
    conn = make_h2(client=True, settings=H2Settings.client())
    conn.initiate_connection()
    conn.send_headers(1, REQUEST)
    with pytest.raises(h2.exceptions.ProtocolError):
        conn.send_headers(1, [(b":status", b"200")])


# --- random frame sequences --------------------------------------------------------------------------------------

_sizes = st.one_of(st.integers(0, 3000), st.integers(0, 70_000))  # mostly within the 65,535-byte windows
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("headers"), st.sampled_from([1, 3, 5]), st.booleans()),
        st.tuples(
            st.just("data"),
            st.sampled_from([1, 1, 3, 5, 7]),
            st.sampled_from([0, 0, 0, 0x1, 0x8, 0x9, 0x20]),
            _sizes,
        ),
        st.tuples(st.just("rst"), st.sampled_from([1, 3, 5])),
        st.tuples(st.just("send"), st.sampled_from([1, 3, 5]), _sizes),
        st.tuples(st.just("pieces"), st.sampled_from([1, 3]), st.lists(st.integers(0, 9000), max_size=4)),
        st.tuples(st.just("ack"), st.sampled_from([1, 3, 5]), _sizes),
        st.tuples(st.just("respond"), st.sampled_from([1, 3, 5]), st.booleans()),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, split=st.integers(1, 50_000))
def test_random_sequences_are_indistinguishable_from_h2(ops: list[tuple[Any, ...]], split: int) -> None:
    twin, client = _opened(1, 3)  # two open streams to start from: the fast paths' home ground
    headers_sent = {1, 3}
    for op in ops:
        if twin.failed:
            break
        kind = op[0]
        wire = b""
        if kind == "headers":
            try:
                client.send_headers(op[1], REQUEST, end_stream=op[2])
            except h2.exceptions.ProtocolError:
                continue
            headers_sent.add(op[1])
            wire = bytes(client.data_to_send())
        elif kind == "data":
            _, sid, flags, size = op
            wire = _raw_data(sid, flags, b"d" * size, pad=3)
        elif kind == "rst":
            wire = struct.pack(">HBBBLL", 0, 4, 0x3, 0, op[1], 8)
        elif kind == "send":
            twin.send(op[1], op[2])
        elif kind == "pieces":
            twin.send_pieces(op[1], op[2])
        elif kind == "ack":
            twin.ack(op[1], op[2])
        elif kind == "respond" and op[1] in headers_sent:
            twin.respond(op[1], [(b":status", b"200")], end_stream=op[2])
        for start in range(0, len(wire), split):  # arbitrary read boundaries
            if not twin.failed:
                twin.receive(wire[start : start + split])


# --- the h2 internals mirrored ---------------------------------------------------------------------------------


def test_h2_internals_mirrored_by_the_fast_paths() -> None:
    machine = h2.stream.H2StreamStateMachine
    table = h2.stream._transitions
    for state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
        assert table[(state, StreamInputs.RECV_DATA)] == (machine.data_received, state)
    for state in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE):
        assert table[(state, StreamInputs.SEND_DATA)] == (None, state)
    source = inspect.getsource(machine.data_received)
    assert "headers_received" in source and "DataReceived(" in source
    conn_table = h2.connection.H2ConnectionStateMachine._transitions
    for state in (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
        for event in (ConnectionInputs.RECV_DATA, ConnectionInputs.SEND_DATA):
            assert conn_table[(state, event)] == (None, state)
    base = h2.connection.H2Connection
    receive = inspect.getsource(base._receive_data_frame)
    assert "window_consumed(" in receive and "stream.receive_data(" in receive
    stream_receive = inspect.getsource(h2.stream.H2Stream.receive_data)
    assert "_inbound_window_manager.window_consumed(" in stream_receive
    assert "_track_content_length(" in stream_receive
    assert "self._actual_content_length += length" in inspect.getsource(h2.stream.H2Stream._track_content_length)
    send = inspect.getsource(base.send_data)
    assert "self.outbound_flow_control_window -= frame_size" in send
    assert "self.outbound_flow_control_window -=" in inspect.getsource(h2.stream.H2Stream.send_data)
    batch = inspect.getsource(base.receive_data)
    assert "except InvalidPaddingError" in batch and "self._terminate_connection(e.error_code)" in batch
    ack = inspect.getsource(base.acknowledge_received_data)
    assert "process_bytes(" in ack and "stream.open" in ack
    assert "self._bytes_processed += size" in inspect.getsource(h2.windows.WindowManager.process_bytes)
    body = inspect.getsource(DataFrame.parse_body)
    assert "self.data =" in body and "self.body_len =" in body
    assert PlainData._fields == ("stream_id", "flags", "views")
    # the fixed response: h2's send_headers only runs the two state machines and records request_method
    assert table[(StreamState.OPEN, StreamInputs.SEND_HEADERS)] == (machine.response_sent, StreamState.OPEN)
    assert table[(StreamState.HALF_CLOSED_REMOTE, StreamInputs.SEND_HEADERS)][0] is machine.response_sent
    assert conn_table[(ConnectionState.SERVER_OPEN, ConnectionInputs.SEND_HEADERS)] == (
        None,
        ConnectionState.SERVER_OPEN,
    )
    headers = inspect.getsource(h2.stream.H2Stream.send_headers)
    assert "self.request_method = extract_method_header(" in headers and "_authority" in headers
    assert "if self.header_table.resized:" in inspect.getsource(hpack.Encoder.encode)
