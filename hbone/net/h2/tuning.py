"""Small, tested adjustments to `h2` internals, applied per connection (never at import time).

Why each exists (docs/performance.md, python-hyper/h2#1181):

1. Receive path: `H2Connection._receive_frame` evaluates `repr(frame)` for a trace log on every frame, and
   hyperframe's DataFrame repr serialises and hex-encodes the whole payload (~27% of receiver CPU). We retag
   received DATA frames as `_QuietDataFrame`, whose repr only states the length, and route that class through
   the same dispatch entry.
2. Send path: stock h2 copies each DATA payload several times (join in serialize_body, header + body, join in
   `_prepare_for_sending`, `bytes(bytearray)` in `data_to_send`). We append header and payload straight into the
   outbound bytearray and hand that bytearray over without copying.
3. GOAWAY: h2 moves its connection state machine to CLOSED on sending or receiving GOAWAY and then refuses all
   frames, which makes the graceful drain of RFC 9113 §6.8 impossible. Our state machine stays open; the driver
   enforces "no new streams" itself. h2 also discards queued outbound bytes on GOAWAY; we keep them.

4. Flow control: h2's `WindowManager` returns credit only once half a window was consumed, so with 4 MiB
   stream windows credit arrives in 2 MiB steps and both peers idled 30-50% in the profile (RESULTS-hbone.md).
   Our managers return it once 1/`window_update_divisor` of the window was consumed. Still only bytes the
   application consumed are credited (`acknowledge_received_data`), so memory per stream stays one window.
5. Received WINDOW_UPDATE frames get the same cheap repr as DATA (the sender sees one per credit step).
6. Stream counting: h2 counts open streams on every new stream (`send_headers`, `_receive_headers_frame`) by
   walking all of them, only to compare the count with SETTINGS_MAX_CONCURRENT_STREAMS (~3% of the churn client's
   and server's CPU). `len(streams)` is an upper bound of that count; while it stays below both limits (and
   `_PRUNE_AT`, which bounds how many closed streams wait for pruning) h2's check passes either way, so we skip
   the walk. Otherwise h2's own walk runs: it counts exactly and prunes closed streams, as before.
7. Header blocks we send are not Huffman-coded (`H2Settings.huffman_headers`): hpack's Huffman coder is pure
   Python and was ~3% of each side's churn CPU (the random `traceparent` is a new literal on every request), for
   ~20% smaller literals that loopback and LAN links do not need. Any peer decodes both forms (RFC 7541 §5.2).
8. Received frames are parsed from the driver's read buffer without h2's two bulk copies of every byte
   (`hbone.net.h2.framebuffer`, which has its own guard tests).
9. Received header blocks are checked by a one-pass C-speed test that can only accept; anything it does not
   accept goes through h2's own validation, which decides (`hbone.net.h2.headers`, with its own guard tests).
10. DATA frames on open streams, both ways, credit, and the `:status 200` of a tunnel skip h2's general
   per-frame machinery (hyperframe objects, state machines, event lists, HPACK) when h2 would do nothing else
   (`hbone.net.h2.fastdata`, with its own equivalence and guard tests); everything else still goes through h2.

`tests/unit/test_net_h2tuning.py` fails if any internal relied on here changes. Pinned: h2>=4.1,<4.5,
hyperframe>=6.0,<6.2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.connection import H2Connection as _StockH2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.stream import H2Stream
from h2.windows import WindowManager
from hpack import Encoder
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import DataFrame, Frame, WindowUpdateFrame

from hbone.net.h2.fastdata import (
    STATUS_200,
    accept_plain_data,
    acknowledge_counted,
    data_event,
    general_frames,
    send_plain_data,
    send_status_200,
)
from hbone.net.h2.framebuffer import FRAME_HEADER, PlainData, ZeroCopyFrameBuffer
from hbone.net.h2.headers import FastHeaderStream
from hbone.net.h2.memory import compact_settings
from hbone.net.settings import H2Settings

# hyperframe's frame header layout: 24-bit length split as (u16, u8), type, flags, 31-bit stream id.
_DATA_TYPE = 0x0
_END_STREAM = 0x1


class _QuietDataFrame(DataFrame):  # type: ignore[misc]
    """A received DATA frame whose repr() does not serialise and hex the payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}, <{len(self.data)} bytes>)"

    def _body_repr(self) -> str:
        return f"<{len(self.data)} bytes>"


class _QuietWindowUpdateFrame(WindowUpdateFrame):  # type: ignore[misc]
    """A received WINDOW_UPDATE whose repr() skips hyperframe's generic flag formatting."""

    def __repr__(self) -> str:
        return f"WindowUpdateFrame(stream_id={self.stream_id}, +{self.window_increment})"


_QUIET = {DataFrame: _QuietDataFrame, WindowUpdateFrame: _QuietWindowUpdateFrame}
_PRUNE_AT = 100  # closed h2 streams may wait this long for h2's walk to prune them (item 6)


class _PlainEncoder(Encoder):  # type: ignore[misc]
    """An hpack encoder that never Huffman-codes literals (item 7)."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        encoded: bytes = super().encode(headers, huffman=False)
        return encoded


class _EagerWindowManager(WindowManager):  # type: ignore[misc]
    """h2's WindowManager, but credit goes back once 1/`divisor` of the window was processed (h2: 1/2)."""

    divisor = 4
    max_window_size: int
    current_window_size: int
    _bytes_processed: int

    def due(self, processed: int) -> bool:
        """Whether `processed` consumed bytes call for a WINDOW_UPDATE (the rule of `_maybe_update_window`)."""
        size = self.max_window_size
        # h2's rule for an exhausted window stays: any 1 KiB (or 1/4 of a tiny window) is worth an update.
        return processed >= size // self.divisor or (self.current_window_size == 0 and processed > min(1024, size // 4))

    def _maybe_update_window(self) -> int | None:
        processed = self._bytes_processed
        if not processed:
            return None
        size = self.max_window_size
        current = self.current_window_size
        if self.due(processed):
            increment = min(processed, size - current)
            self._bytes_processed = 0
            self.current_window_size = current + increment
            return increment
        return 0


def _joined(views: list[memoryview]) -> bytes:
    return views[0].tobytes() if len(views) == 1 else b"".join(views)


def _eager(manager: WindowManager, divisor: int) -> None:
    manager.__class__ = _EagerWindowManager
    manager.divisor = divisor


def _graceful_transitions() -> dict[Any, Any]:
    table = dict(H2ConnectionStateMachine._transitions)
    for state in (ConnectionState.IDLE, ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN):
        for event in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY):
            table[(state, event)] = (None, state)
    return table


class _GracefulStateMachine(H2ConnectionStateMachine):  # type: ignore[misc]
    """RFC 9113 §6.8: streams up to last_stream_id may complete after GOAWAY, so GOAWAY does not close."""

    _transitions = _graceful_transitions()


class TunedH2Connection(_StockH2Connection):  # type: ignore[misc]
    """`h2.connection.H2Connection` with the adjustments described in the module docstring."""

    _data_to_send: bytearray
    #: Makes the event of a run of plain DATA frames: (stream_id, data, flow-controlled size) -> event. h2's
    #: DataReceived here; the engine's subclass makes its own event type at once (no second object per read).
    data_event: Callable[[int, bytes, int], Any] = staticmethod(data_event)

    def __init__(self, config: H2Configuration, window_update_divisor: int = 2, huffman: bool = True) -> None:
        super().__init__(config=config)
        if not huffman:
            self.encoder.__class__ = _PlainEncoder
        self.incoming_buffer = ZeroCopyFrameBuffer(server=not config.client_side, plain_data=True)
        self.state_machine = _GracefulStateMachine()
        for stock, quiet in _QUIET.items():
            self._frame_dispatch_table[quiet] = self._frame_dispatch_table[stock]
        self._window_divisor = window_update_divisor
        _eager(self._inbound_flow_control_window_manager, window_update_divisor)
        compact_settings(self.local_settings)
        compact_settings(self.remote_settings)

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> H2Stream:
        stream: H2Stream = super()._begin_new_stream(stream_id, allowed_ids)
        _eager(stream._inbound_window_manager, self._window_divisor)
        if stream.__class__ is H2Stream:
            stream.__class__ = FastHeaderStream  # item 9
        return stream

    def _open_streams(self, remainder: int) -> int:
        count = len(self.streams)  # item 6: an upper bound of the open streams of either parity
        limit = min(_PRUNE_AT, self.local_settings.max_concurrent_streams, self.remote_settings.max_concurrent_streams)
        if count < limit:
            return count
        exact: int = super()._open_streams(remainder)
        return exact

    def receive_data(self, data: Any) -> list[Any]:
        """h2's `receive_data`, with unpadded DATA frames handled by `receive_plain_data` (item 10)."""
        events: list[Any] = []
        buffer = self.incoming_buffer
        buffer.add_data(data)
        buffer.max_frame_size = self.max_inbound_frame_size
        make = self.data_event
        run = 0  # the stream of the open run of consecutive plain frames (0: none), its flow and payload views
        flow = 0
        views: list[memoryview] = []
        try:
            for item in buffer:
                if item.__class__ is PlainData:
                    size = sum(map(len, item.views))
                    if accept_plain_data(self, item, size):
                        if run == item.stream_id:
                            views += item.views
                            flow += size
                            continue
                        if run:
                            events.append(make(run, _joined(views), flow))
                        run, flow, views = item.stream_id, size, item.views
                        continue
                    if run:
                        events.append(make(run, _joined(views), flow))
                        run = 0
                    events += general_frames(self, item, _QuietDataFrame)
                    continue
                if run:
                    events.append(make(run, _joined(views), flow))
                    run = 0
                events += self._receive_frame(item)
            if run:  # the views point into the caller's buffer: copied before we return
                events.append(make(run, _joined(views), flow))
        except InvalidPaddingError as exc:  # the same answers as h2's receive_data
            self._terminate_connection(ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from exc
        except ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise
        return events

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """h2's method; while neither window is due for an update, acknowledging is only counting (item 10)."""
        if not acknowledge_counted(self, acknowledged_size, stream_id):
            super().acknowledge_received_data(acknowledged_size, stream_id)

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False, **priority: Any) -> None:
        """h2's method; the plain `:status 200` of a tunnel goes through `send_status_200` (item 10)."""
        if headers == STATUS_200 and not end_stream and not priority and send_status_200(self, stream_id):
            return
        super().send_headers(stream_id, headers, end_stream, **priority)

    def send_plain_data(self, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
        """One DATA frame of `size` bytes made of `pieces` (no END_STREAM, no padding), via the fast path (item 10)."""
        send_plain_data(self, stream_id, pieces, size)

    def _receive_frame(self, frame: Frame) -> Any:
        quiet = _QUIET.get(frame.__class__)
        if quiet is not None:
            frame.__class__ = quiet
        return super()._receive_frame(frame)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        out = self._data_to_send
        for f in frames:
            # Unpadded DATA (the only kind we send) is written as header + payload: one copy, into `out`.
            if f.__class__ is DataFrame and not f.pad_length and "PADDED" not in f.flags:
                data = f.data
                size = len(data)
                flags = _END_STREAM if "END_STREAM" in f.flags else 0
                out += FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE, flags, f.stream_id & 0x7FFFFFFF)
                out += data
                f.body_len = size
            else:
                out += f.serialize()

    def data_to_send(self, amount: int | None = None) -> bytes | bytearray:
        if amount is not None:
            return bytes(super().data_to_send(amount))
        # Hand the buffer over instead of copying it; h2 starts a fresh one.
        data: bytearray = self._data_to_send
        self._data_to_send = bytearray()
        return data

    def outbound_size(self) -> int:
        """Bytes queued for the transport."""
        return len(self._data_to_send)

    def clear_outbound_data_buffer(self) -> None:
        # h2 calls this on a received GOAWAY; with a graceful drain the queued frames must still go out.
        return None


def make_h2(
    *, client: bool, settings: H2Settings, cls: type[TunedH2Connection] = TunedH2Connection
) -> TunedH2Connection:
    """A tuned sans-IO connection configured from `settings` (validation on for inbound headers)."""
    config = H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_outbound_headers=settings.validate_outbound_headers,
        normalize_outbound_headers=settings.validate_outbound_headers,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    return cls(config, settings.window_update_divisor, settings.huffman_headers)
