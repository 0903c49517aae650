"""The sans-IO engine contract (`hbone.net.h2.api`): bytes in -> events, commands -> bytes, without a transport.

Each test drives our engine against stock h2 (the oracle: it decodes what we send and produces what we must
decode), or two of our engines against each other. `ENGINES` names every engine the factory can make; a second
engine is tested by adding its maker there.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from hbone.errors import H2ErrorCode, ProtocolError
from hbone.net.h2 import api, new_engine
from hbone.net.h2.api import Engine
from hbone.net.settings import H2Settings, KiB, MiB

EngineMaker = Callable[[bool, H2Settings], Engine]
ENGINES: dict[str, EngineMaker] = {
    name: lambda client, settings, name=name: new_engine(client=client, settings=settings.replace(engine=name))
    for name in ("h2", "h2-stock", "native")
}
REQUEST = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(params=sorted(ENGINES))
def make(request: pytest.FixtureRequest) -> EngineMaker:
    maker: EngineMaker = ENGINES[request.param]
    return maker


def stock(client: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    peer.initiate_connection()
    return peer


def to_stock(engine: Engine, peer: h2.connection.H2Connection) -> list[h2.events.Event]:
    return list(peer.receive_data(bytes(engine.take_output())))


def from_stock(peer: h2.connection.H2Connection, engine: Engine) -> list[api.Event]:
    return engine.receive(memoryview(bytes(peer.data_to_send())))


def kinds(events: list[api.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def server_with_stream(make: EngineMaker) -> tuple[Engine, h2.connection.H2Connection]:
    """Our server engine with stream 1 opened by a stock client (both handshakes done)."""
    server = make(False, H2Settings.server())
    server.start()
    client = stock(True)
    client.send_headers(1, REQUEST)
    events = from_stock(client, server)
    assert kinds(events) == ["SettingsChanged", "RequestReceived"]
    to_stock(server, client)
    assert kinds(from_stock(client, server)) == ["SettingsAcked"]
    return server, client


def test_start_announces_our_settings_and_window(make: EngineMaker) -> None:
    settings = H2Settings.client(initial_stream_window=1 * MiB, connection_window=8 * MiB, max_frame_size=32 * KiB)
    engine = make(True, settings)
    engine.start()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    events = to_stock(engine, server)
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)).changed_settings
    codes = h2.settings.SettingCodes
    assert changed[codes.INITIAL_WINDOW_SIZE].new_value == 1 * MiB
    assert changed[codes.MAX_FRAME_SIZE].new_value == 32 * KiB
    assert changed[codes.ENABLE_PUSH].new_value == 0
    assert changed[codes.MAX_HEADER_LIST_SIZE].new_value == settings.max_header_list_size
    assert server.outbound_flow_control_window == 8 * MiB
    assert engine.pending() == 0  # take_output handed everything over


def test_request_response_data_and_end_both_ways(make: EngineMaker) -> None:
    server, client = server_with_stream(make)
    server.send_headers(1, [(b":status", b"200")], False)  # the one-byte fast path
    server.send_data(1, [b"ab", memoryview(b"cd")], 4)
    server.end_stream(1)
    got = to_stock(server, client)
    assert [type(e) for e in got] == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.DataReceived,
        h2.events.StreamEnded,
    ]
    assert got[0].headers == [(b":status", b"200")] and got[1].data == b"abcd"  # type: ignore[attr-defined]
    client.send_data(1, b"x" * 100, end_stream=True)
    events = from_stock(client, server)
    assert kinds(events) == ["DataReceived", "StreamEnded"]
    data = events[0]
    assert isinstance(data, api.DataReceived) and data.data == b"x" * 100 and data.flow == 100


def test_h2_stock_takes_h2s_per_frame_data_path() -> None:
    """Engine "h2-stock" (the baseline of tools/bench/h2_micro.py) has the DATA fast path off: consecutive DATA
    frames of one read are one event each, where the fast path joins them into one."""
    got = {}
    for name in ("h2", "h2-stock"):
        server, client = server_with_stream(ENGINES[name])
        for _ in range(3):
            client.send_data(1, b"x" * 10)
        got[name] = kinds(from_stock(client, server))
    assert got == {"h2": ["DataReceived"], "h2-stock": ["DataReceived"] * 3}


def test_padding_counts_in_flow_and_trailers_arrive(make: EngineMaker) -> None:
    server, client = server_with_stream(make)
    client.send_data(1, b"abc", pad_length=10)
    client.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events = from_stock(client, server)
    assert kinds(events) == ["DataReceived", "TrailersReceived", "StreamEnded"]
    data, trailers = events[0], events[1]
    assert isinstance(data, api.DataReceived) and data.data == b"abc" and data.flow == 3 + 10 + 1
    assert isinstance(trailers, api.TrailersReceived) and trailers.headers == [(b"grpc-status", b"0")]


def test_client_engine_opens_streams_and_reads_the_response(make: EngineMaker) -> None:
    client = make(True, H2Settings.client())
    client.start()
    server = stock(False)
    to_stock(client, server)
    sid = client.open_stream(REQUEST, False)
    assert sid == 1 and client.open_stream(REQUEST, True) == 3
    got = to_stock(client, server)
    requests = [e for e in got if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in requests] == [1, 3] and requests[0].headers == REQUEST
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    events = from_stock(server, client)
    assert kinds(events) == ["SettingsChanged", "SettingsAcked", "ResponseReceived", "StreamEnded"]
    first = events[0]
    assert isinstance(first, api.SettingsChanged) and first.first
    response = events[2]
    assert isinstance(response, api.ResponseReceived) and response.end_stream


def test_reset_window_ping_and_goaway_events(make: EngineMaker) -> None:
    server, client = server_with_stream(make)
    client.reset_stream(1, 8)
    client.increment_flow_control_window(1000)
    client.ping(b"12345678")
    events = from_stock(client, server)
    assert kinds(events) == ["StreamReset", "WindowUpdated", "ControlFrame"]
    reset = events[0]
    assert isinstance(reset, api.StreamReset) and (reset.stream_id, reset.code, reset.remote) == (1, 8, True)
    assert [type(e) for e in to_stock(server, client)] == [h2.events.PingAckReceived]  # answered by the engine
    server.ping(b"abcdefgh")
    to_stock(server, client)
    acked = from_stock(client, server)
    assert len(acked) == 1 and isinstance(acked[0], api.PingAcked) and acked[0].opaque == b"abcdefgh"
    client.close_connection(error_code=0, last_stream_id=0, additional_data=b"bye")
    goaway = from_stock(client, server)[0]
    assert isinstance(goaway, api.GoAwayReceived) and (goaway.code, goaway.last_stream_id, goaway.debug) == (
        0,
        0,
        b"bye",
    )


def test_commands_on_closed_streams(make: EngineMaker) -> None:
    server, client = server_with_stream(make)
    client.reset_stream(1, 8)
    from_stock(client, server)
    with pytest.raises(api.StreamClosed):
        server.send_headers(1, [(b":status", b"200")], False)
    with pytest.raises(api.StreamClosed):
        server.send_data(1, [b"x"], 1)
    with pytest.raises(api.StreamClosed):
        server.end_stream(1)
    server.reset_stream(1, 8)  # no-ops, never raise
    server.credit(1, 10)
    server.credit(99, 10)
    assert server.pending() == 0


def test_credit_returns_window_when_due(make: EngineMaker) -> None:
    settings = H2Settings.server(initial_stream_window=64 * KiB, connection_window=64 * KiB)
    server = make(False, settings)
    server.start()
    client = stock(True)
    client.send_headers(1, REQUEST)
    from_stock(client, server)
    to_stock(server, client)
    client.send_data(1, b"x" * 60_000)
    from_stock(client, server)
    assert client.local_flow_control_window(1) < 6000
    server.credit(1, 60_000)
    to_stock(server, client)
    assert client.local_flow_control_window(1) == 64 * KiB


def test_send_window_and_peer_settings(make: EngineMaker) -> None:
    server, client = server_with_stream(make)
    assert server.send_window(1) == 65_535
    assert server.max_send_frame == 16_384 and server.peer_max_concurrent_streams == 100
    assert server.highest_inbound_stream_id == 1
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    events = from_stock(client, server)
    changed = events[0]
    assert isinstance(changed, api.SettingsChanged) and changed.window_changed and not changed.first
    assert server.send_window(1) == 1000


def test_header_list_between_the_limit_and_twice_the_limit_reaches_the_driver(make: EngineMaker) -> None:
    settings = H2Settings.server(max_header_list_size=4 * KiB)
    server = make(False, settings)
    server.start()
    client = stock(True)
    to_stock(server, client)
    client.send_headers(1, [*REQUEST, (b"x-big", b"a" * 6000)])  # over the limit, under 2x: the driver's 431
    events = from_stock(client, server)
    assert "RequestReceived" in kinds(events)
    client.send_headers(3, [*REQUEST, (b"x-big", b"a" * 9000)])  # over 2x: a connection error
    with pytest.raises(ProtocolError):
        from_stock(client, server)


def test_a_bad_preface_raises_and_queues_goaway(make: EngineMaker) -> None:
    server = make(False, H2Settings.server())
    server.start()
    server.take_output()
    with pytest.raises(ProtocolError) as info:
        server.receive(memoryview(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20))
    assert info.value.h2_code == H2ErrorCode.PROTOCOL_ERROR
    client = stock(True)
    events = client.receive_data(bytes(server.take_output()))
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


def test_a_frame_error_raises_with_its_code(make: EngineMaker) -> None:
    server = make(False, H2Settings.server())
    server.start()
    server.take_output()
    # WINDOW_UPDATE on stream 0 with increment 0 (RFC 9113 §6.9: PROTOCOL_ERROR)
    bad = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    with pytest.raises(ProtocolError) as info:
        server.receive(memoryview(bad))
    assert info.value.h2_code == H2ErrorCode.PROTOCOL_ERROR
    client = stock(True)
    goaway = [
        e for e in client.receive_data(bytes(server.take_output())) if isinstance(e, h2.events.ConnectionTerminated)
    ]
    assert goaway and goaway[0].error_code == H2ErrorCode.PROTOCOL_ERROR


def test_goaway_keeps_existing_streams_working(make: EngineMaker) -> None:
    """RFC 9113 §6.8: streams up to last_stream_id complete after GOAWAY, on both of our engines."""
    client, server = make(True, H2Settings.client()), make(False, H2Settings.server())
    client.start()
    server.start()
    sid = client.open_stream(REQUEST, False)
    server.receive(memoryview(bytes(client.take_output())))
    server.goaway(H2ErrorCode.NO_ERROR)
    server.send_headers(sid, [(b":status", b"200")], False)
    server.send_data(sid, [b"after goaway"], 12)
    events = client.receive(memoryview(bytes(server.take_output())))
    goaway = next(e for e in events if isinstance(e, api.GoAwayReceived))
    assert goaway.last_stream_id == sid and goaway.code == H2ErrorCode.NO_ERROR
    client.send_data(sid, [b"reply"], 5)
    client.end_stream(sid)
    events = server.receive(memoryview(bytes(client.take_output())))
    assert kinds(events)[-2:] == ["DataReceived", "StreamEnded"]
    assert any(isinstance(e, api.DataReceived) and e.data == b"reply" for e in events)
