"""`H2Engine`: the `Engine` on the `h2` library, with our tuned subclass and fast paths (`tuning`).

h2 is used through this class only: it applies our SETTINGS, turns h2's events into `api` events (one small object
each; the DATA fast path's joined runs stay one event) and h2's exceptions into `hbone.errors`. Everything the
fast paths and the tuned classes do is described in `hbone.net.h2.tuning`. Engine "h2-stock" is the same class
with the DATA and credit fast paths off (`_StockDataH2Connection`): the baseline they are measured against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.connection
import h2.events as ev
import h2.exceptions as h2x
from h2.settings import SettingCodes, Settings

from hbone.errors import H2ErrorCode, ProtocolError
from hbone.net.h2.api import (
    ControlFrame,
    DataReceived,
    Event,
    GoAwayReceived,
    HeaderList,
    PingAcked,
    RequestReceived,
    ResponseReceived,
    SettingsAcked,
    SettingsChanged,
    StreamClosed,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from hbone.net.h2.memory import compact_settings
from hbone.net.h2.tuning import TunedH2Connection, make_h2
from hbone.net.settings import H2Settings

_DEFAULT_WINDOW = 65_535  # RFC 9113 §6.9.2 initial connection window


def _code(value: int) -> H2ErrorCode:
    try:
        return H2ErrorCode(value)
    except ValueError:
        return H2ErrorCode.PROTOCOL_ERROR


def refused(exc: h2x.ProtocolError) -> ProtocolError:
    """h2's refusal of a command, in our tree: `StreamClosed` for a stream h2 has closed (docs/performance.md)."""
    if isinstance(exc, h2x.StreamClosedError):
        return StreamClosed(str(exc))
    return ProtocolError(str(exc))


def connection_error(exc: h2x.ProtocolError) -> ProtocolError:
    """A connection error found in received bytes; `h2_code` is the GOAWAY's error code."""
    err = ProtocolError(str(exc))
    err.h2_code = _code(int(getattr(exc, "error_code", H2ErrorCode.PROTOCOL_ERROR)))
    return err


class _EngineH2Connection(TunedH2Connection):
    """The tuned connection whose DATA fast path makes our `DataReceived` directly (one object per read)."""

    data_event = DataReceived


class _StockDataH2Connection(_EngineH2Connection):
    """h2's own per-frame code for received DATA, credit and sent DATA (engine "h2-stock"): every other tuning
    stays, so a benchmark of the two engines measures exactly the DATA fast paths (`tools/bench/h2_micro.py`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.incoming_buffer.plain_data = False  # DATA frames reach h2's frame dispatch like every other frame

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        h2.connection.H2Connection.acknowledge_received_data(self, acknowledged_size, stream_id)

    def send_plain_data(self, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
        self.send_data(stream_id, b"".join(pieces))


class H2Engine:
    """One connection's HTTP/2 state on h2 (sans-IO; see `Engine` for the contract of every method)."""

    __slots__ = ("_h2", "_seen_settings", "_settings")

    def __init__(self, *, client: bool, settings: H2Settings) -> None:
        self._settings = settings
        cls = _StockDataH2Connection if settings.engine == "h2-stock" else _EngineH2Connection
        self._h2: TunedH2Connection = make_h2(client=client, settings=settings, cls=cls)
        self._seen_settings = False

    def start(self) -> None:
        s = self._settings
        h2c = self._h2
        values = {
            SettingCodes.INITIAL_WINDOW_SIZE: s.initial_stream_window,
            SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            SettingCodes.HEADER_TABLE_SIZE: s.header_table_size,  # h2 sends it anyway (default 4096)
        }
        client = h2c.config.client_side
        if client:
            values[SettingCodes.ENABLE_PUSH] = 0
        h2c.local_settings = Settings(client=client, initial_values=values)
        # A fresh Settings is a deque per setting again (~5 KiB per connection, xds_memprobe.py): compact it too.
        compact_settings(h2c.local_settings)
        self._header_headroom()
        # h2 raises its frame-size limit only when a read batch *starts* after our SETTINGS were ACKed, so a peer
        # that sends the ACK and a large frame in one segment would hit FRAME_SIZE_ERROR. Accept what we
        # advertise from the start (frames above 16 KiB before the ACK are not a risk to us).
        h2c.max_inbound_frame_size = s.max_frame_size
        h2c.initiate_connection()
        if s.connection_window > _DEFAULT_WINDOW:
            h2c.increment_flow_control_window(s.connection_window - _DEFAULT_WINDOW)

    def _header_headroom(self) -> None:
        # h2 sets the decoder limit to the advertised value on ACK; keep headroom so that an oversized request
        # gets a 431 on its stream (the driver's check) and only a grossly oversized one kills the connection.
        self._h2.decoder.max_header_list_size = 2 * self._settings.max_header_list_size

    def receive(self, data: memoryview) -> list[Event]:
        h2c = self._h2
        try:
            events = h2c.receive_data(data)
        except h2x.ProtocolError as exc:
            if not h2c.outbound_size():  # h2 queues a GOAWAY for frame-level errors; a bad preface raises first
                code = int(getattr(exc, "error_code", H2ErrorCode.PROTOCOL_ERROR))
                try:
                    h2c.close_connection(error_code=code, last_stream_id=h2c.highest_inbound_stream_id)
                except h2x.ProtocolError:
                    pass
            raise connection_error(exc) from exc
        out: list[Event] = []
        translate = _TRANSLATE
        for event in events:
            cls = event.__class__
            if cls is DataReceived:  # a run of plain DATA frames, made as our event by the fast path
                out.append(event)
                continue
            convert = translate.get(cls)
            if convert is not None:
                out.append(convert(self, event))
        return out

    # --- commands --------------------------------------------------------------------------------------------

    def open_stream(self, headers: HeaderList, end_stream: bool) -> int:
        h2c = self._h2
        try:
            sid: int = h2c.get_next_available_stream_id()
            h2c.send_headers(sid, headers, end_stream=end_stream)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc
        return sid

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc

    def send_data(self, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
        try:
            self._h2.send_plain_data(stream_id, pieces, size)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc

    def end_stream(self, stream_id: int) -> None:
        try:
            self._h2.end_stream(stream_id)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc

    def reset_stream(self, stream_id: int, code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except h2x.ProtocolError:
            pass  # already closed in h2: nothing to reset

    def credit(self, stream_id: int, size: int) -> None:
        if size <= 0:
            return
        try:
            self._h2.acknowledge_received_data(size, stream_id)
        except h2x.ProtocolError:
            pass  # a stream h2 never knew: nothing to credit

    def goaway(self, code: int, last_stream_id: int | None = None, debug: bytes = b"") -> None:
        h2c = self._h2
        last = h2c.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        try:
            h2c.close_connection(error_code=code, additional_data=debug or None, last_stream_id=last)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc

    def ping(self, opaque: bytes) -> None:
        try:
            self._h2.ping(opaque)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc

    # --- state -----------------------------------------------------------------------------------------------

    def send_window(self, stream_id: int) -> int:
        try:
            window: int = self._h2.local_flow_control_window(stream_id)
        except h2x.ProtocolError as exc:
            raise refused(exc) from exc
        return window

    @property
    def max_send_frame(self) -> int:
        size: int = self._h2.max_outbound_frame_size
        return size

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def peer_max_header_list_size(self) -> int | None:
        limit: int | None = self._h2.remote_settings.max_header_list_size
        return limit

    @property
    def highest_inbound_stream_id(self) -> int:
        sid: int = self._h2.highest_inbound_stream_id
        return sid

    # --- output ----------------------------------------------------------------------------------------------

    def pending(self) -> int:
        return len(self._h2._data_to_send)

    def take_output(self) -> bytes | bytearray:
        return self._h2.data_to_send()


# --- h2 event -> api event -------------------------------------------------------------------------------------


def _request(engine: H2Engine, e: Any) -> Event:
    return RequestReceived(e.stream_id, e.headers, e.stream_ended is not None)


def _response(engine: H2Engine, e: Any) -> Event:
    return ResponseReceived(e.stream_id, e.headers, e.stream_ended is not None)


def _settings(engine: H2Engine, e: Any) -> Event:
    first = not engine._seen_settings
    engine._seen_settings = True
    return SettingsChanged(first, SettingCodes.INITIAL_WINDOW_SIZE in e.changed_settings)


def _settings_acked(engine: H2Engine, e: Any) -> Event:
    engine._header_headroom()
    return SettingsAcked()


_TRANSLATE: dict[type[Any], Callable[[H2Engine, Any], Event]] = {
    ev.RequestReceived: _request,
    ev.ResponseReceived: _response,
    ev.TrailersReceived: lambda _, e: TrailersReceived(e.stream_id, e.headers),
    ev.DataReceived: lambda _, e: DataReceived(e.stream_id, e.data, e.flow_controlled_length),
    ev.StreamEnded: lambda _, e: StreamEnded(e.stream_id),
    ev.StreamReset: lambda _, e: StreamReset(e.stream_id, int(e.error_code), e.remote_reset),
    ev.WindowUpdated: lambda _, e: WindowUpdated(e.stream_id),
    ev.RemoteSettingsChanged: _settings,
    ev.SettingsAcknowledged: _settings_acked,
    ev.PingReceived: lambda _, e: ControlFrame(0),
    ev.PriorityUpdated: lambda _, e: ControlFrame(e.stream_id),
    ev.PingAckReceived: lambda _, e: PingAcked(e.ping_data),
    ev.ConnectionTerminated: lambda _, e: GoAwayReceived(int(e.error_code), e.last_stream_id, e.additional_data or b""),
}
