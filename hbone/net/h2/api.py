"""The contract between the asyncio connection driver and a sans-IO HTTP/2 engine.

An engine turns received bytes into `Event`s and the driver's commands into bytes to send; it does no I/O, keeps no
timers and never calls back into the driver. Two engines implement it: one on the `h2` library (sealed behind this
interface: nothing outside `hbone.net.h2` imports h2, hyperframe or hpack) and our own frame layer for the HBONE and
gRPC profile. Both are driven by the same tests, so either can serve as the other's oracle.

Errors: a connection error in received bytes raises `hbone.errors.ProtocolError` (its `h2_code` is the GOAWAY code;
the engine has already queued the GOAWAY). A command on a stream the engine considers closed raises
`StreamClosed` and changes nothing; any other refused command raises `hbone.errors.ProtocolError`.
"""

from __future__ import annotations

from typing import Protocol

from hbone.errors import ProtocolError

Header = tuple[bytes, bytes]
HeaderList = list[Header]


class StreamClosed(ProtocolError):
    """A send on a stream that is already closed in the engine (e.g. reset by the peer earlier in the same read)."""


class Event:
    """Base of everything `Engine.receive` returns."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RequestReceived(Event):
    """A request's header block (server side); `end_stream` set when it carried END_STREAM."""

    __slots__ = ("end_stream", "headers")

    def __init__(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        super().__init__(stream_id)
        self.headers = headers
        self.end_stream = end_stream


class ResponseReceived(RequestReceived):
    """A final response's header block (client side; informational 1xx blocks are not reported)."""

    __slots__ = ()


class TrailersReceived(Event):
    __slots__ = ("headers",)

    def __init__(self, stream_id: int, headers: HeaderList) -> None:
        super().__init__(stream_id)
        self.headers = headers


class DataReceived(Event):
    """Payload of one or more DATA frames of one stream; `flow` counts padding too (credit it all back)."""

    __slots__ = ("data", "flow")

    def __init__(self, stream_id: int, data: bytes, flow: int) -> None:
        self.stream_id = stream_id  # not super().__init__: one event per read on the bulk path
        self.data = data
        self.flow = flow


class StreamEnded(Event):
    """The peer's END_STREAM (after the headers/data/trailers events of the same frame)."""

    __slots__ = ()


class StreamReset(Event):
    """RST_STREAM from the peer (`remote`), or a stream error the engine found and answered with RST_STREAM."""

    __slots__ = ("code", "remote")

    def __init__(self, stream_id: int, code: int, remote: bool) -> None:
        super().__init__(stream_id)
        self.code = code
        self.remote = remote


class WindowUpdated(Event):
    """More send window on `stream_id` (0: the connection, or every stream after INITIAL_WINDOW_SIZE grew)."""

    __slots__ = ()


class SettingsChanged(Event):
    """The peer's SETTINGS (already ACKed by the engine); `first` for the first SETTINGS of the connection."""

    __slots__ = ("first", "window_changed")

    def __init__(self, first: bool, window_changed: bool) -> None:
        super().__init__(0)
        self.first = first
        self.window_changed = window_changed


class SettingsAcked(Event):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(0)


class ControlFrame(Event):
    """A PING (already answered by the engine) or PRIORITY frame: only counted against the flood limit."""

    __slots__ = ()


class PingAcked(Event):
    __slots__ = ("opaque",)

    def __init__(self, opaque: bytes) -> None:
        super().__init__(0)
        self.opaque = opaque


class GoAwayReceived(Event):
    __slots__ = ("code", "debug", "last_stream_id")

    def __init__(self, code: int, last_stream_id: int, debug: bytes) -> None:
        super().__init__(0)
        self.code = code
        self.last_stream_id = last_stream_id
        self.debug = debug


class Engine(Protocol):
    """What the driver needs from an HTTP/2 engine (RFC 9113); one instance per connection."""

    def start(self) -> None:
        """Queue the preface (client), our SETTINGS (from the engine's `H2Settings`: stream window, frame size,
        concurrent streams, header list size, header table size; ENABLE_PUSH=0 on clients) and the connection
        window increase up to `connection_window`. Frames up to our max_frame_size are accepted from now on
        (before the peer ACKs), and the HPACK decoder allows 2x max_header_list_size, so the driver can answer
        a merely oversized request with 431 and only a grossly oversized one is a connection error."""

    def receive(self, data: memoryview) -> list[Event]:
        """Process received bytes; `data` may be reused after return (copy what is kept)."""
        ...

    # --- commands (each queues frames; nothing is written until `take_output`) -------------------------------
    def open_stream(self, headers: HeaderList, end_stream: bool) -> int:
        """Client: a new stream with these request headers; returns its id."""
        ...

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool) -> None:
        """A response or trailer block (a bare `:status 200` may take a fast path: one static-table byte)."""

    def send_data(self, stream_id: int, pieces: list[bytes | memoryview], size: int) -> None:
        """One DATA frame of `size` bytes (the sum of `pieces`), no END_STREAM; `size` fits `send_window`."""

    def end_stream(self, stream_id: int) -> None:
        """An empty DATA frame with END_STREAM."""

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM; a no-op for a stream that is already closed (never raises)."""

    def credit(self, stream_id: int, size: int) -> None:
        """The application consumed `size` received bytes: WINDOW_UPDATEs when due (stream and connection).
        Never raises; on a closed or unknown stream only the connection window is credited."""

    def goaway(self, code: int, last_stream_id: int | None = None, debug: bytes = b"") -> None:
        """GOAWAY; `last_stream_id` None announces `highest_inbound_stream_id`. The engine stays open for the
        streams up to it (RFC 9113 §6.8 graceful drain); refusing new streams is the driver's job."""

    def ping(self, opaque: bytes) -> None: ...

    # --- state -------------------------------------------------------------------------------------------
    def send_window(self, stream_id: int) -> int:
        """Bytes `stream_id` may send now (the smaller of its window and the connection's)."""
        ...

    @property
    def max_send_frame(self) -> int:
        """The peer's SETTINGS_MAX_FRAME_SIZE."""
        ...

    @property
    def peer_max_concurrent_streams(self) -> int: ...

    @property
    def peer_max_header_list_size(self) -> int | None: ...

    @property
    def highest_inbound_stream_id(self) -> int:
        """The highest stream id the peer opened (what a GOAWAY announces as last_stream_id)."""
        ...

    # --- output --------------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Bytes queued for the transport."""
        ...

    def take_output(self) -> bytes | bytearray:
        """Everything queued, handed over (the engine starts a new buffer)."""
        ...
