"""Small, tested adjustments to `h2` internals, applied per connection (never at import time).

Why each exists (reference/performance-notes.md, python-hyper/h2#1181):

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

`tests/unit/test_net_h2tuning.py` fails if any internal relied on here changes. Pinned: h2>=4.1,<4.5,
hyperframe>=6.0,<6.2.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.connection import H2Connection as _StockH2Connection
from hyperframe.frame import DataFrame, Frame

from hbone.net.settings import H2Settings

# hyperframe's frame header layout: 24-bit length split as (u16, u8), type, flags, 31-bit stream id.
_FRAME_HEADER = struct.Struct(">HBBBL")
_DATA_TYPE = 0x0
_END_STREAM = 0x1


class _QuietDataFrame(DataFrame):  # type: ignore[misc]
    """A received DATA frame whose repr() does not serialise and hex the payload."""

    def _body_repr(self) -> str:
        return f"<{len(self.data)} bytes>"


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
    """`h2.connection.H2Connection` with the three adjustments described in the module docstring."""

    _data_to_send: bytearray

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.state_machine = _GracefulStateMachine()
        self._frame_dispatch_table[_QuietDataFrame] = self._frame_dispatch_table[DataFrame]

    def _receive_frame(self, frame: Frame) -> Any:
        if frame.__class__ is DataFrame:
            frame.__class__ = _QuietDataFrame
        return super()._receive_frame(frame)

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        out = self._data_to_send
        for f in frames:
            # Unpadded DATA (the only kind we send) is written as header + payload: one copy, into `out`.
            if f.__class__ is DataFrame and not f.pad_length and "PADDED" not in f.flags:
                data = f.data
                size = len(data)
                flags = _END_STREAM if "END_STREAM" in f.flags else 0
                out += _FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE, flags, f.stream_id & 0x7FFFFFFF)
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


def make_h2(*, client: bool, settings: H2Settings) -> TunedH2Connection:
    """A tuned sans-IO connection configured from `settings` (validation on for inbound headers)."""
    config = H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_outbound_headers=settings.validate_outbound_headers,
        normalize_outbound_headers=settings.validate_outbound_headers,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    return TunedH2Connection(config)
