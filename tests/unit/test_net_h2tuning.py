"""The h2 shims in hbone.net.h2.tuning: they must change nothing on the wire, and these tests must fail loudly if
the h2 / hyperframe internals they rely on change (pinned h2>=4.1,<4.5, hyperframe>=6.0,<6.2)."""

from __future__ import annotations

import inspect

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import DataFrame, WindowUpdateFrame

from hbone.net.h2.tuning import TunedH2Connection, _QuietDataFrame, _QuietWindowUpdateFrame, make_h2
from hbone.net.settings import H2Settings

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")]


def stock(client: bool) -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))


def pump(src: h2.connection.H2Connection, dst: h2.connection.H2Connection) -> list[h2.events.Event]:
    return list(dst.receive_data(bytes(src.data_to_send())))


# --- the internals we rely on ------------------------------------------------------------------------------------


def test_h2_internals_still_exist() -> None:
    base = h2.connection.H2Connection
    # 1. the trace call we work around still builds repr(frame) eagerly; if h2 drops it the shim can go
    assert "repr(frame)" in inspect.getsource(base._receive_frame)
    assert "_frame_dispatch_table[frame.__class__]" in inspect.getsource(base._receive_frame)
    # hyperframe's DataFrame repr still serialises the body (the cost we avoid), and has no __slots__
    assert "serialize_body" in inspect.getsource(DataFrame.__mro__[2]._body_repr)  # Frame._body_repr
    assert DataFrame._body_repr is DataFrame.__mro__[2]._body_repr
    assert not hasattr(DataFrame, "__slots__") or "__dict__" in dir(DataFrame())
    # 2. outbound buffering
    assert inspect.signature(base._prepare_for_sending).parameters.keys() == {"self", "frames"}
    assert "self._data_to_send +=" in inspect.getsource(base._prepare_for_sending)
    assert isinstance(stock(True)._data_to_send, bytearray)
    assert isinstance(stock(True)._frame_dispatch_table, dict)
    assert DataFrame in stock(True)._frame_dispatch_table
    # 3. GOAWAY handling
    table = h2.connection.H2ConnectionStateMachine._transitions
    assert (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY) in table
    assert "clear_outbound_data_buffer" in inspect.getsource(base._receive_goaway_frame)
    assert isinstance(stock(True).state_machine, h2.connection.H2ConnectionStateMachine)
    # the per-batch frame size limit comes from max_inbound_frame_size (the driver presets it)
    assert "self.incoming_buffer.max_frame_size = self.max_inbound_frame_size" in inspect.getsource(base.receive_data)
    # 4. flow control: managers are created per connection / per stream, and the update rule is one method
    from h2.stream import H2Stream
    from h2.windows import WindowManager

    assert "WindowManager(" in inspect.getsource(H2Stream.__init__)
    assert "self._inbound_window_manager" in inspect.getsource(H2Stream.acknowledge_received_data)
    assert isinstance(stock(True)._inbound_flow_control_window_manager, WindowManager)
    assert "H2Stream(" in inspect.getsource(base._begin_new_stream)
    assert list(inspect.signature(base._begin_new_stream).parameters) == ["self", "stream_id", "allowed_ids"]
    assert "self._maybe_update_window()" in inspect.getsource(WindowManager.process_bytes)
    assert "max_window_size // 2" in inspect.getsource(WindowManager._maybe_update_window)
    manager = WindowManager(100)
    assert (manager._bytes_processed, manager.current_window_size, manager.max_window_size) == (0, 100, 100)
    # 5. received WINDOW_UPDATE frames go through the same dispatch table
    assert WindowUpdateFrame in stock(True)._frame_dispatch_table
    # header list limit lives on the hpack decoder
    assert stock(False).decoder.max_header_list_size == base.DEFAULT_MAX_HEADER_LIST_SIZE


# --- behaviour ---------------------------------------------------------------------------------------------------


def _scenario(conn: h2.connection.H2Connection) -> bytes:
    conn.initiate_connection()
    conn.send_headers(1, REQUEST)
    conn.send_data(1, b"a" * 1000)
    conn.send_data(1, memoryview(b"b" * 16384))
    conn.send_data(1, b"")
    conn.send_data(1, b"c" * 10, pad_length=5)  # padded frames take the stock path
    conn.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
    conn.send_headers(3, REQUEST)
    conn.send_data(3, b"d" * 7, end_stream=True)
    conn.ping(b"12345678")
    return bytes(conn.data_to_send())


def test_tuned_connection_sends_identical_bytes() -> None:
    settings = H2Settings.client(validate_outbound_headers=True, huffman_headers=True, engine="h2")  # item 7 aside
    assert _scenario(make_h2(client=True, settings=settings)) == _scenario(stock(True))


def test_data_to_send_hands_over_the_buffer() -> None:
    conn = make_h2(client=True, settings=H2Settings.client())
    conn.initiate_connection()
    first = conn.data_to_send()
    assert isinstance(first, bytearray)
    snapshot = bytes(first)
    conn.ping(b"87654321")
    assert bytes(first) == snapshot  # later frames go into a fresh buffer
    assert conn.outbound_size() == 17  # one PING frame
    head = conn.data_to_send(5)  # bounded reads keep stock semantics
    assert isinstance(head, bytes) and len(head) == 5
    assert len(conn.data_to_send()) == 12
    assert conn.outbound_size() == 0


def test_received_data_is_never_serialised_for_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    original = DataFrame.serialize_body

    def spy(self: DataFrame) -> bytes:
        nonlocal calls
        calls += 1
        return bytes(original(self))

    monkeypatch.setattr(DataFrame, "serialize_body", spy)

    def receive_48k(server: h2.connection.H2Connection) -> list[h2.events.Event]:
        client = stock(True)
        client.initiate_connection()
        client.update_settings({})
        pump(client, server)
        pump(server, client)
        client.send_headers(1, REQUEST)
        for _ in range(3):
            client.send_data(1, b"z" * 16384)
        return list(server.receive_data(bytes(client.data_to_send())))

    before = calls
    events = receive_48k(make_h2(client=False, settings=H2Settings.server()))
    tuned_calls = calls - before
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert sum(len(e.data) for e in data) == 3 * 16384
    # the stock connection does serialise each received DATA frame: proves the spy sees the cost we avoid
    before = calls
    receive_48k(stock(False))
    stock_calls = calls - before
    assert stock_calls >= 3
    assert tuned_calls == stock_calls - 3


def test_quiet_frame_repr_is_short() -> None:
    frame = _QuietDataFrame(1, data=b"q" * 100_000)
    assert len(repr(frame)) < 100
    assert isinstance(frame, DataFrame)


def test_quiet_window_update_repr() -> None:
    frame = _QuietWindowUpdateFrame(3, window_increment=7)
    assert repr(frame) == "WindowUpdateFrame(stream_id=3, +7)"
    assert isinstance(frame, WindowUpdateFrame)


def _stream_credit(src: h2.connection.H2Connection, dst: h2.connection.H2Connection) -> list[int]:
    return [e.delta for e in pump(src, dst) if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1]


@pytest.mark.parametrize("divisor", [2, 4, 8])
def test_credit_returns_after_one_nth_of_the_window(divisor: int) -> None:
    """Credit goes back once 1/divisor of a window was consumed, and never more than was consumed."""
    window = 1 << 20
    settings = H2Settings.server(
        initial_stream_window=window, connection_window=4 * window, window_update_divisor=divisor
    )
    server = make_h2(client=False, settings=settings)
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
    )
    server.initiate_connection()
    server.increment_flow_control_window(4 * window - 65_535)
    client = stock(True)
    client.initiate_connection()
    client.receive_data(bytes(server.data_to_send()))
    client.update_settings({})
    pump(client, server)
    pump(server, client)  # our SETTINGS ACKed: the 1 MiB stream window applies
    client.send_headers(1, REQUEST)
    chunk = 16_384
    for _ in range(window // chunk - 1):  # not the whole window: h2's "exhausted window" rule stays out of it
        client.send_data(1, b"x" * chunk)
    events = pump(client, server)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == window - chunk
    step = window // divisor
    consumed = 0
    while consumed + chunk < step:
        server.acknowledge_received_data(chunk, 1)
        consumed += chunk
    assert _stream_credit(server, client) == []  # below 1/divisor of the window: nothing yet
    server.acknowledge_received_data(chunk, 1)
    consumed += chunk
    assert _stream_credit(server, client) == [consumed]  # exactly what was consumed, once 1/divisor is reached


def test_goaway_keeps_streams_alive_both_ways() -> None:
    """RFC 9113 §6.8: after GOAWAY, streams up to last_stream_id complete. Stock h2 cannot (h2#1181)."""
    client = make_h2(client=True, settings=H2Settings.client())
    server = make_h2(client=False, settings=H2Settings.server())
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, REQUEST)
    pump(client, server)
    pump(server, client)
    server.close_connection(last_stream_id=1)
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"after goaway", end_stream=True)
    events = pump(server, client)
    kinds = [type(e) for e in events]
    assert h2.events.ConnectionTerminated in kinds
    assert any(isinstance(e, h2.events.DataReceived) and e.data == b"after goaway" for e in events)
    client.send_data(1, b"client still sends", end_stream=True)
    events = pump(client, server)
    assert any(isinstance(e, h2.events.DataReceived) for e in events)


def test_stock_h2_still_closes_on_goaway() -> None:
    """If this starts failing, h2 fixed #1181 and the state-machine shim can be dropped."""
    client, server = stock(True), stock(False)
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, REQUEST)
    pump(client, server)
    pump(server, client)
    server.close_connection(last_stream_id=1)
    with pytest.raises(h2.exceptions.ProtocolError):
        server.send_headers(1, [(b":status", b"200")])


def test_make_h2_configuration() -> None:
    conn = make_h2(client=True, settings=H2Settings.client())
    assert isinstance(conn, TunedH2Connection)
    assert conn.config.client_side
    assert conn.config.header_encoding is None
    assert not conn.config.validate_outbound_headers
    assert conn.config.validate_inbound_headers
    conn = make_h2(client=False, settings=H2Settings.server(validate_outbound_headers=True, engine="h2"))
    assert conn.config.validate_outbound_headers and not conn.config.client_side


# --- 6. stream counting without the walk, 7. header blocks without Huffman ----------------------------------------


def test_h2_still_counts_streams_only_to_compare_with_the_limit() -> None:
    """Item 6 relies on h2 using the open-stream counts only in `value + 1 > max_open_streams` checks."""
    base = h2.connection.H2Connection
    assert "self.open_outbound_streams" in inspect.getsource(base.send_headers)
    assert "self.open_inbound_streams" in inspect.getsource(base._receive_headers_frame)
    for prop in (base.open_outbound_streams, base.open_inbound_streams):
        assert "self._open_streams(" in inspect.getsource(prop.fget)
    assert "to_delete" in inspect.getsource(base._open_streams)  # the walk still prunes closed streams


def _open_and_close(client: h2.connection.H2Connection, server: h2.connection.H2Connection, sid: int) -> None:
    client.send_headers(sid, REQUEST, end_stream=True)
    pump(client, server)
    server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    pump(server, client)


def test_stream_limits_enforced_exactly_and_closed_streams_pruned() -> None:
    from hbone.net.h2.tuning import _PRUNE_AT

    client = make_h2(client=True, settings=H2Settings.client())
    server = make_h2(client=False, settings=H2Settings.server())
    client.initiate_connection()
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    pump(server, client)
    pump(client, server)
    for i in range(2 * _PRUNE_AT):  # closed streams never pile up beyond the pruning bound
        _open_and_close(client, server, 1 + 2 * i)
        assert len(client.streams) <= _PRUNE_AT and len(server.streams) <= _PRUNE_AT
    sid = 1 + 4 * _PRUNE_AT
    for k in range(3):  # three open streams are allowed, the fourth is not: exactly stock h2's answer
        client.send_headers(sid + 2 * k, REQUEST)
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(sid + 6, REQUEST)
    assert client.open_outbound_streams == 3


def test_server_refuses_streams_above_its_limit_like_stock_h2() -> None:
    server = make_h2(client=False, settings=H2Settings.server())
    server.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})  # fmt: skip
    client = stock(True)  # never sees the server's SETTINGS, so it does not enforce the limit itself
    client.initiate_connection()
    server.initiate_connection()
    for sid in (1, 3):
        client.send_headers(sid, REQUEST)
    assert [type(e) for e in pump(client, server)].count(h2.events.RequestReceived) == 2
    client.send_headers(5, REQUEST)
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        pump(client, server)


def test_header_blocks_sent_without_huffman_and_decoded_by_stock_h2() -> None:
    value = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [*REQUEST, (b"traceparent", value)]
    blocks = []
    for huffman in (False, True):
        conn = make_h2(client=True, settings=H2Settings.client(huffman_headers=huffman))
        conn.initiate_connection()
        conn.send_headers(1, headers)
        blocks.append(bytes(conn.data_to_send()))
        server = stock(False)
        events = server.receive_data(blocks[-1])
        request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
        assert list(request.headers) == headers  # stock h2 decodes both forms
    assert value in blocks[0] and value not in blocks[1]  # the literal as-is, vs Huffman-coded
