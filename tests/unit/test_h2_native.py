"""The native HTTP/2 engine on its own: a client and a server engine talking to each other, the frame checks of
RFC 9113 §4-6 with their GOAWAY codes, CONTINUATION, read splits and flow control. The comparison with the
h2-backed engine on the same inputs is tests/unit/test_h2_native_diff.py."""

from __future__ import annotations

import random

import hpack
import pytest

from hbone.errors import ConfigError, H2ErrorCode, ProtocolError
from hbone.net.h2 import api
from hbone.net.h2.native_conn import NativeEngine
from hbone.net.h2.native_frames import PREFACE
from hbone.net.h2.native_hpack import HeaderCodec
from hbone.net.settings import H2Settings
from tests.unit.h2_twin import frame

REQUEST = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080")]


def _pair() -> tuple[NativeEngine, NativeEngine]:
    client = NativeEngine(client=True, settings=H2Settings.client())
    server = NativeEngine(client=False, settings=H2Settings.server())
    client.start()
    server.start()
    _pass(client, server)
    _pass(server, client)
    _pass(client, server)
    return client, server


def _pass(a: NativeEngine, b: NativeEngine) -> list[api.Event]:
    return b.receive(memoryview(bytes(a.take_output())))


def _server() -> NativeEngine:
    server = NativeEngine(client=False, settings=H2Settings.server())
    server.start()
    server.receive(memoryview(PREFACE + frame(4, 0, 0, b"")))
    server.take_output()
    return server


def test_tunnel_round_trip() -> None:
    client, server = _pair()
    sid = client.open_stream(REQUEST, False)
    (request,) = _pass(client, server)
    assert isinstance(request, api.RequestReceived)
    assert (request.stream_id, request.headers, request.end_stream) == (sid, REQUEST, False)
    server.send_headers(sid, [(b":status", b"200")], False)
    (response,) = _pass(server, client)
    assert isinstance(response, api.ResponseReceived)
    assert response.headers == [(b":status", b"200")]
    client.send_data(sid, [b"ab", memoryview(b"cd")], 4)
    client.send_data(sid, [b"ef"], 2)
    (data,) = _pass(client, server)  # two frames of one stream in one read: one event
    assert isinstance(data, api.DataReceived)
    assert (data.data, data.flow) == (b"abcdef", 6)
    client.end_stream(sid)
    assert [type(e) for e in _pass(client, server)] == [api.DataReceived, api.StreamEnded]
    server.end_stream(sid)
    _pass(server, client)
    assert client.stream_state(sid) == server.stream_state(sid) == 6
    with pytest.raises(api.StreamClosed):
        client.send_data(sid, [b"x"], 1)
    server.reset_stream(sid, 8)  # closed: nothing happens
    assert server.pending() == 0


def test_credit_returns_windows_in_steps() -> None:
    client, server = _pair()
    sid = client.open_stream(REQUEST, False)
    _pass(client, server)
    chunk = bytes(65_527)
    sent = 0
    while client.send_window(sid) >= len(chunk):
        client.send_data(sid, [chunk], len(chunk))
        sent += len(chunk)
    assert sent == (4 * 1024 * 1024 // len(chunk)) * len(chunk)  # the server's stream window
    for event in _pass(client, server):
        if isinstance(event, api.DataReceived):
            server.credit(event.stream_id, event.flow)
    updates = _pass(server, client)
    # The stream's 4 MiB window was consumed past 1/4 (credit due), the connection's 16 MiB not yet.
    assert [e.stream_id for e in updates if isinstance(e, api.WindowUpdated)] == [sid]
    assert client.send_window(sid) == 4 * 1024 * 1024


def test_any_read_split_gives_the_same_events() -> None:
    block = hpack.Encoder().encode(REQUEST)
    stream = (
        PREFACE
        + frame(4, 0, 0, b"")
        + frame(1, 0x0, 1, block[:3])  # a header block cut in two: HEADERS, then CONTINUATION
        + frame(9, 0x4, 1, block[3:])
        + frame(0, 0, 1, b"x" * 300)
        + frame(0, 0x8, 1, b"\x02yy\x00\x00")
        + frame(6, 0, 0, b"12345678")
        + frame(0, 0x1, 1, b"z")
    )

    def run(cuts: list[int]) -> list[tuple[object, ...]]:
        server = NativeEngine(client=False, settings=H2Settings.server())
        events: list[api.Event] = []
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            events += server.receive(memoryview(bytearray(stream[a:b])))
        out: list[tuple[object, ...]] = []
        for e in events:
            if isinstance(e, api.DataReceived) and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + e.data, out[-1][2] + e.flow)  # type: ignore[operator]
            elif isinstance(e, api.DataReceived):
                out.append(("data", e.data, e.flow))
            else:
                out.append((type(e).__name__, e.stream_id))
        return out

    whole = run([])
    assert whole == [
        ("SettingsChanged", 0),
        ("RequestReceived", 1),
        ("data", b"x" * 300 + b"yy", 305),
        ("ControlFrame", 0),
        ("data", b"z", 1),
        ("StreamEnded", 1),
    ]
    for step in (1, 7, 9, 10, 64):
        assert run(list(range(step, len(stream), step))) == whole


def test_a_data_frame_cut_by_a_read_joins_the_next_reads_data_in_one_event() -> None:
    """Bulk reads end inside DATA frames; the completed frame and the next ones of the same stream make one event
    (one write onward), as whole frames within one read do."""
    client, server = _pair()
    sid = client.open_stream(REQUEST, False)
    _pass(client, server)
    for part in (b"a" * 1000, b"b" * 1000, b"c" * 1000):
        client.send_data(sid, [part], len(part))
    wire = bytes(client.take_output())
    first = server.receive(memoryview(bytearray(wire[:1500])))  # the second frame is cut
    rest = server.receive(memoryview(bytearray(wire[1500:])))
    assert [(type(e), e.data) for e in first] == [(api.DataReceived, b"a" * 1000)]
    assert [(type(e), e.data, e.flow) for e in rest] == [(api.DataReceived, b"b" * 1000 + b"c" * 1000, 2000)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0, 0, 1, b"x"), H2ErrorCode.PROTOCOL_ERROR),  # DATA before any HEADERS
        (frame(1, 0x4, 2, b"\x82"), H2ErrorCode.PROTOCOL_ERROR),  # a stream id of the server's parity
        (frame(6, 0, 0, bytes(7)), H2ErrorCode.FRAME_SIZE_ERROR),
        (frame(3, 0, 1, bytes(5)), H2ErrorCode.FRAME_SIZE_ERROR),
        (frame(2, 0, 1, bytes(4)), H2ErrorCode.FRAME_SIZE_ERROR),
        (frame(4, 0, 0, bytes(5)), H2ErrorCode.FRAME_SIZE_ERROR),
        (frame(7, 0, 0, bytes(7)), H2ErrorCode.FRAME_SIZE_ERROR),
        (frame(8, 0, 0, bytes(4)), H2ErrorCode.PROTOCOL_ERROR),  # WINDOW_UPDATE of 0
        (frame(8, 0, 0, (2**31 - 1).to_bytes(4, "big")), H2ErrorCode.FLOW_CONTROL_ERROR),
        (frame(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), H2ErrorCode.FLOW_CONTROL_ERROR),  # initial window 2^31
        (frame(4, 0, 0, b"\x00\x05\x00\x00\x00\x01"), H2ErrorCode.PROTOCOL_ERROR),  # max frame size 1
        (frame(5, 0x4, 1, bytes(4)), H2ErrorCode.PROTOCOL_ERROR),  # PUSH_PROMISE
        (frame(0, 0, 0, b"x"), H2ErrorCode.PROTOCOL_ERROR),  # DATA on stream 0
        (frame(6, 0, 1, bytes(8)), H2ErrorCode.PROTOCOL_ERROR),  # PING on a stream
        (frame(1, 0x4, 1, b"\xff\xff"), H2ErrorCode.PROTOCOL_ERROR),  # broken HPACK
        (frame(1, 0x0, 1, b"\x82") + frame(0, 0, 1, b"x"), H2ErrorCode.PROTOCOL_ERROR),  # DATA inside a block
        (frame(9, 0x4, 1, b"\x82"), H2ErrorCode.PROTOCOL_ERROR),  # CONTINUATION without HEADERS
        (b"\x20\x00\x00\x00\x00\x00\x00\x00\x01", H2ErrorCode.FRAME_SIZE_ERROR),  # a 2 MiB DATA header: refused
    ],
)
def test_connection_errors(data: bytes, code: H2ErrorCode) -> None:
    server = _server()
    with pytest.raises(ProtocolError) as info:
        server.receive(memoryview(data))
    assert info.value.h2_code == code
    goaway = bytes(server.take_output())
    assert goaway[3] == 7 and int.from_bytes(goaway[13:17], "big") == code
    with pytest.raises(ProtocolError):  # the engine stays failed
        server.receive(memoryview(frame(6, 0, 0, bytes(8))))


@pytest.mark.parametrize(
    "headers",
    [
        [*REQUEST, (b"Upper", b"v")],
        [*REQUEST, (b"connection", b"close")],
        [*REQUEST, (b"te", b"gzip")],
        [*REQUEST, (b"x", b" v")],
        [*REQUEST, (b":path", b"/")],  # CONNECT with :path
        [(b":authority", b"a"), (b":method", b"GET"), (b":scheme", b"http")],  # no :path
        [(b"x", b"1"), *REQUEST],  # pseudo-header after a regular one
        [*REQUEST, (b"host", b"other")],
        [*REQUEST, (b":bogus", b"1")],
    ],
)
def test_bad_request_headers_are_connection_errors(headers: list[tuple[bytes, bytes]]) -> None:
    server = _server()
    with pytest.raises(ProtocolError) as info:
        server.receive(memoryview(frame(1, 0x4, 1, hpack.Encoder().encode(headers))))
    assert info.value.h2_code == H2ErrorCode.PROTOCOL_ERROR


def test_cookies_are_joined_and_content_length_is_enforced() -> None:
    server = _server()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b"cookie", b"a=1"),
        (b":path", b"/"),
        (b":authority", b"a"),
        (b"cookie", b"b=2"),
        (b"content-length", b"3"),
    ]
    (request,) = server.receive(memoryview(frame(1, 0x4, 1, hpack.Encoder().encode(headers))))
    assert isinstance(request, api.RequestReceived)
    assert request.headers[-1] == (b"cookie", b"a=1; b=2")
    with pytest.raises(ProtocolError):
        server.receive(memoryview(frame(0, 0x1, 1, b"xy")))


@pytest.mark.parametrize(("table_size", "block"), [(4096, "88"), (8192, "88"), (100, "3f4588"), (0, "2088")])
def test_a_table_size_update_only_when_the_peer_lowers_it(table_size: int, block: str) -> None:
    """Our encoder's table is at most 4096 bytes: a larger maximum changes nothing, only a lower one is announced
    (RFC 7541 §4.2; the rest in test_h2_native_hpack); Istio's vectors pin the one-byte `:status 200` block of a
    tunnel (test_istio_hbone_vectors)."""
    server = _server()
    server.receive(memoryview(frame(1, 0x4, 1, hpack.Encoder().encode(REQUEST))))
    server.receive(memoryview(frame(4, 0, 0, (1).to_bytes(2, "big") + table_size.to_bytes(4, "big"))))
    server.take_output()
    server.send_headers(1, [(b":status", b"200")], False)
    assert bytes(server.take_output())[9:].hex() == block


def test_header_blocks_larger_than_a_frame_go_out_with_continuation() -> None:
    client = NativeEngine(client=True, settings=H2Settings.client())
    server = _server()
    client.start()
    client.take_output()
    big = [*REQUEST, (b"x-big", b"v" * 40_000)]
    sid = client.open_stream(big, True)
    out = bytes(client.take_output())
    assert out[3] == 1 and out[9 + 16_384 + 3] == 9  # HEADERS of 16 KiB (the peer's frame size), CONTINUATION
    request, ended = server.receive(memoryview(out))
    assert isinstance(request, api.RequestReceived) and request.headers == big and request.end_stream
    assert isinstance(ended, api.StreamEnded) and ended.stream_id == sid


@pytest.mark.parametrize("seed", range(300))
def test_hpack_decoder_agrees_with_hpack(seed: int) -> None:
    """Our HPACK decoder against hpack's on a sequence of blocks from hpack's encoder (dynamic table, Huffman,
    size updates), some mutated: the same fields, or an error in both (ENHANCE_YOUR_CALM exactly for hpack's
    oversized list)."""
    rng = random.Random(seed)
    encoder = hpack.Encoder()
    ours = HeaderCodec(300, huffman=False)
    theirs = hpack.Decoder(max_header_list_size=300)
    for _ in range(12):
        if rng.random() < 0.15:
            encoder.header_table_size = rng.choice([0, 100, 4096, 5000])
        fields = [(rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randrange(1, 6))]
        block = bytearray(encoder.encode(fields, huffman=rng.random() < 0.5))
        for _ in range(rng.choice([0, 0, 0, 1, 3])):
            block[rng.randrange(len(block))] = rng.randrange(256)
        if rng.random() < 0.05:
            del block[rng.randrange(len(block)) :]
        try:
            want: object = [tuple(h) for h in theirs.decode(bytes(block), raw=True)]
        except hpack.OversizedHeaderListError:
            want = H2ErrorCode.ENHANCE_YOUR_CALM
        except (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError):
            want = H2ErrorCode.PROTOCOL_ERROR
        try:
            got: object = [tuple(h) for h in ours.decode(bytes(block))]
        except ProtocolError as exc:
            got = exc.h2_code
        assert got == want
        if isinstance(want, H2ErrorCode):
            return  # the connection is gone: the tables need not agree any more


_NAMES = [b":method", b":path", b"x-a", b"cookie", b"authorization", b"traceparent", b"content-type"]
_VALUES = [b"GET", b"/", b"", b"v" * 40, b"application/grpc", b"00-" + b"ab" * 20]


def test_settings_refuse_what_the_native_engine_does_not_do() -> None:
    with pytest.raises(ConfigError, match="engine"):
        H2Settings(engine="nghttp2")
    with pytest.raises(ConfigError, match="validate_outbound_headers"):
        H2Settings(engine="native", validate_outbound_headers=True)


def test_an_unfinished_header_block_is_bounded() -> None:
    """A CONTINUATION flood: HEADERS and CONTINUATION frames that never end a block are refused once they hold
    more than 4x the decoder's header list limit (2x max_header_list_size), not buffered up to 64 frames."""
    server = _server()  # max_header_list_size 64 KiB: the block limit is 512 KiB
    server.receive(memoryview(frame(1, 0x0, 1, b"\x00" * 500_000)))
    with pytest.raises(ProtocolError) as info:
        server.receive(memoryview(frame(9, 0x0, 1, b"\x00" * 100_000)))
    assert info.value.h2_code == H2ErrorCode.ENHANCE_YOUR_CALM
