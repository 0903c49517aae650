"""Per-stream state of the native engine: RFC 9113 §5.1 states, flow-control windows, content-length.

A stream is a plain record (`__slots__`, ints) that `native_conn` changes directly: the transitions a tunnel
makes (open, data both ways, end or reset) are an attribute store each, where h2 looked up a transition table
keyed by enum pairs and built an event per step. The state numbers and "closed by" codes are h2's, so the
differential tests can compare both engines' streams directly.

Receive-window credit follows the driver's tuning of h2 (`H2Settings.window_update_divisor`): consumed bytes are
returned in one WINDOW_UPDATE once 1/N of the window was consumed, or any 1 KiB (1/4 of a tiny window) once the
window is exhausted, never more than the window's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hbone.errors import ProtocolError
    from hbone.net.h2.native_hpack import HeaderCodec
    from hbone.net.settings import H2Settings

# Stream states (h2's StreamState values; idle and reserved streams never exist here: no push).
OPEN = 3
HALF_CLOSED_REMOTE = 4
HALF_CLOSED_LOCAL = 5
CLOSED = 6

# How a stream closed (h2's StreamClosedBy values).
SEND_END_STREAM = 0
RECV_END_STREAM = 1
SEND_RST_STREAM = 2
RECV_RST_STREAM = 3
BY_RESET = (SEND_RST_STREAM, RECV_RST_STREAM)


class Stream:
    """One stream's state; `local` is True for streams this side opened."""

    __slots__ = (
        "actual_length",
        "closed_by",
        "expected_length",
        "head_request",
        "headers_received",
        "headers_sent",
        "local",
        "processed",
        "recv_max",
        "recv_window",
        "send_window",
        "state",
        "stream_id",
        "trailers_received",
    )

    def __init__(self, stream_id: int, local: bool, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.local = local
        self.state = OPEN
        self.closed_by: int | None = None
        self.headers_sent = local
        self.headers_received = not local
        self.trailers_received = False
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_max = recv_window
        self.processed = 0  # consumed bytes not yet returned in a WINDOW_UPDATE
        self.expected_length: int | None = None
        self.actual_length = 0
        self.head_request = False

    @property
    def open(self) -> bool:
        return self.state != CLOSED

    def end_remote(self) -> None:
        """The peer's END_STREAM."""
        if self.state == OPEN:
            self.state = HALF_CLOSED_REMOTE
        else:
            self.state = CLOSED
            self.closed_by = RECV_END_STREAM

    def end_local(self) -> None:
        """Our END_STREAM."""
        if self.state == OPEN:
            self.state = HALF_CLOSED_LOCAL
        else:
            self.state = CLOSED
            self.closed_by = SEND_END_STREAM

    def close(self, closed_by: int) -> None:
        self.state = CLOSED
        self.closed_by = closed_by


def credit_due(processed: int, current: int, maximum: int, divisor: int) -> int | None:
    """The WINDOW_UPDATE increment for `processed` consumed bytes: None while they only need counting, else the
    increment (possibly 0: due, but the window is already full) after which the counter restarts."""
    if processed >= maximum // divisor or (current == 0 and processed > min(1024, maximum // 4)):
        return min(processed, maximum - current)
    return None


class Window:
    """The connection's receive window (the streams keep theirs inline)."""

    __slots__ = ("current", "maximum", "processed")

    def __init__(self, size: int) -> None:
        self.current = size
        self.maximum = size
        self.processed = 0

    def consume(self, size: int) -> bool:
        """Received `size` flow-controlled bytes; False when that overruns the window."""
        self.current -= size
        return self.current >= 0

    def credit(self, size: int, divisor: int) -> int:
        """The application consumed `size` bytes: the increment to send now (0: none)."""
        processed = self.processed + size
        if not processed:
            return 0
        increment = credit_due(processed, self.current, self.maximum, divisor)
        if increment is None:
            self.processed = processed
            return 0
        self.processed = 0
        self.current += increment
        return increment

    def open_by(self, size: int) -> None:
        """Our own WINDOW_UPDATE beyond the initial size (the connection window at start)."""
        self.current += size
        self.maximum = max(self.maximum, self.current)


class Connection(Protocol):
    """What the receive side (`native_receive`, `native_headers`) uses of its `NativeEngine`: the connection
    state and its stream bookkeeping. A protocol, so that the engine can own the receiver without a circle."""

    client: bool
    settings: H2Settings
    out: bytearray
    streams: dict[int, Stream]
    closed: dict[int, int | None]
    open_in: int
    idle: bool
    recv_window: Window
    conn_send_window: int
    peer: dict[int, int]
    peer_initial_window: int
    peer_max_frame: int
    codec: HeaderCodec
    divisor: int

    def fail(self, exc: ProtocolError) -> None: ...
    def new_stream(self, sid: int, local: bool) -> Stream: ...
    def retire(self, stream: Stream) -> None: ...
    def is_local_id(self, sid: int) -> bool: ...
    def seen(self, sid: int) -> bool: ...
    def closed_by_reset(self, sid: int) -> bool: ...
    def reset_on_error(self, stream: Stream, code: int) -> None: ...
