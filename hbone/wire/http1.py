"""HTTP/1.1 message framing (RFC 9112), sans-IO: request/response heads, Content-Length and chunked bodies.

`MessageReader.feed(data)` returns events (`Request` or `Response`, `Data`..., `EndOfMessage`) and stops at the
end of one message, keeping what follows for `next_message()` (keep-alive, pipelining). Parsing is strict where
leniency enables request smuggling (RFC 9112 §6.3, §11.2): CRLF line endings only, no obs-fold, no whitespace
before the colon, Transfer-Encoding together with Content-Length is refused, and Content-Length must be one
decimal number. Heads and chunk lines have size limits; errors carry the status to answer (400, 431, 501, 505).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from hbone.wire.authority import Authority, parse_authority
from hbone.wire.h1head import (
    DEFAULT_MAX_LINE,
    Headers,
    HeadLimits,
    HeadScanner,
    HeadTooLarge,
    Http1Error,
    Request,
    Response,
    VersionNotSupported,
    header,
    parse_request_head,
    parse_response_head,
    parse_trailers,
)
from hbone.wire.h1head import limits as head_limits

DEFAULT_MAX_HEAD = 64 * 1024
DEFAULT_MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
#: RFC 9110 §7.6.1 connection-specific fields; never forwarded (plus whatever `Connection` names).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer",
     "proxy-authenticate", "proxy-authorization"}
)  # fmt: skip


class NotImplementedFraming(Http1Error):
    """A Transfer-Encoding other than chunked on a request (RFC 9112 §6.1: 501)."""

    http_status = 501


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: Headers = ()


Event = Request | Response | Data | EndOfMessage


class Framing(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # responses only (RFC 9112 §6.3 rule 8)


def _tokens(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [t.strip().lower() for k, v in headers if k.lower() == name for t in v.split(",") if t.strip()]


def body_framing(head: Request | Response, request_method: str = "GET") -> tuple[Framing, int]:
    """RFC 9112 §6.3: how the body of `head` is delimited; (framing, length) with length for LENGTH only."""
    if isinstance(head, Response) and (request_method == "HEAD" or head.status < 200 or head.status in (204, 304)):
        return Framing.NONE, 0
    codings = _tokens(head.headers, "transfer-encoding")
    lengths = [v for k, v in head.headers if k.lower() == "content-length"]
    if codings:
        if lengths:
            raise Http1Error("both Transfer-Encoding and Content-Length (RFC 9112 §6.1)")
        if codings[-1] == "chunked" and codings.count("chunked") == 1:
            return (Framing.CHUNKED, 0) if len(codings) == 1 or isinstance(head, Response) else _unsupported(codings)
        if isinstance(head, Request):
            raise Http1Error(f"request Transfer-Encoding {', '.join(codings)} does not end in chunked")
        return Framing.UNTIL_CLOSE, 0
    if lengths:
        values = {t.strip() for v in lengths for t in v.split(",")}
        if len(values) != 1 or not (text := values.pop()).isascii() or not text.isdigit() or len(text) > 18:
            raise Http1Error(f"invalid Content-Length {', '.join(lengths)!r}")
        n = int(text)
        return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
    return (Framing.UNTIL_CLOSE, 0) if isinstance(head, Response) else (Framing.NONE, 0)


def _unsupported(codings: list[str]) -> tuple[Framing, int]:
    raise NotImplementedFraming(f"request Transfer-Encoding {', '.join(codings)} is not supported")


def keep_alive(head: Request | Response) -> bool:
    """RFC 9112 §9.3: HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with `keep-alive`."""
    tokens = _tokens(head.headers, "connection")
    if "close" in tokens:
        return False
    return head.version == "HTTP/1.1" or "keep-alive" in tokens


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones and those the `Connection` header names (RFC 9110 §7.6.1)."""
    listed = HOP_BY_HOP | set(_tokens(headers, "connection"))
    return [(k, v) for k, v in headers if k.lower() not in listed]


class _State(enum.Enum):
    HEAD = 0
    BODY = 1
    CHUNK_LINE = 2
    CHUNK_DATA = 3
    CHUNK_CRLF = 4
    TRAILERS = 5
    DONE = 6


_STATE_FOR = {
    Framing.NONE: _State.BODY,  # zero bytes left: the next step ends the message
    Framing.LENGTH: _State.BODY,
    Framing.UNTIL_CLOSE: _State.BODY,
    Framing.CHUNKED: _State.CHUNK_LINE,
}


@dataclass
class MessageReader:
    """Incremental reader of one message at a time. `response=True` reads responses to `request_method`."""

    response: bool = False
    max_head: int = DEFAULT_MAX_HEAD
    max_headers: int = DEFAULT_MAX_HEADERS
    request_method: str = "GET"
    max_line: int = DEFAULT_MAX_LINE
    _buf: bytearray = field(default_factory=bytearray)
    _state: _State = _State.HEAD
    _framing: Framing = Framing.NONE
    _left: int = 0
    _limits: HeadLimits = field(init=False)
    _heads: HeadScanner = field(init=False)
    _trailer_scan: HeadScanner | None = field(init=False, default=None)  # made when a chunked body ends

    def __post_init__(self) -> None:
        self._limits = head_limits(self.max_head, self.max_headers, self.max_line)
        what = "response head" if self.response else "request head"
        self._heads = HeadScanner(self._limits, what, skip_empty=not self.response)

    @property
    def buffered(self) -> bytes:
        """Bytes received but not yet consumed (the start of the next message, after EndOfMessage)."""
        return bytes(self._buf)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def framing(self) -> Framing:
        return self._framing

    def next_message(self, request_method: str = "GET") -> None:
        """Start reading the next message on the connection (after EndOfMessage)."""
        if self._state is not _State.DONE:
            raise Http1Error("next_message() before the current message ended")
        self._state, self.request_method = _State.HEAD, request_method

    def take_buffered(self) -> bytes:
        """Hand the unconsumed bytes to the caller (a connection switching protocols after 101)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._heads.reset()
        self._trailer_scan = None
        return data

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while self._state is not _State.DONE and (event := self._step()) is not None:
            events.append(event)
        return events

    def eof(self) -> list[Event]:
        """The peer closed: ends an until-close body; anywhere else mid-message is an error."""
        if self._state is _State.BODY and self._framing is Framing.UNTIL_CLOSE:
            self._state = _State.DONE
            return [EndOfMessage()]
        if self._state is _State.HEAD and not self._buf:
            return []
        if self._state is _State.DONE:
            return []
        raise Http1Error(f"connection closed mid-message ({self._state.name.lower().replace('_', ' ')})")

    def _step(self) -> Event | None:
        state = self._state
        if state is _State.HEAD:
            return self._head()
        if state is _State.BODY:
            if self._framing is Framing.UNTIL_CLOSE:
                return self._take(len(self._buf)) if self._buf else None
            if not self._left:
                self._state = _State.DONE
                return EndOfMessage()
            return self._take(min(self._left, len(self._buf))) if self._buf else None
        if state is _State.CHUNK_LINE:
            return self._chunk_line()
        if state is _State.CHUNK_DATA:
            if not self._left:
                self._state = _State.CHUNK_CRLF
                return self._step()
            return self._take(min(self._left, len(self._buf))) if self._buf else None
        if state is _State.CHUNK_CRLF:
            if len(self._buf) < 2:
                return None
            if self._buf[:2] != b"\r\n":
                raise Http1Error("chunk data not followed by CRLF")
            del self._buf[:2]
            self._state = _State.CHUNK_LINE
            return self._step()
        return self._trailers()

    def _take(self, n: int) -> Data:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._left -= n
        return Data(chunk)

    def _block(self, scanner: HeadScanner) -> bytes | None:
        """The next head or trailer section without its blank line, once it is all here (each byte scanned once)."""
        end = scanner.find_end(self._buf)
        if end is None:
            return None
        block = bytes(self._buf[: end - 4])
        del self._buf[:end]
        return block

    def _head(self) -> Event | None:
        block = self._block(self._heads)
        if block is None:
            return None
        head: Request | Response
        if self.response:
            head = parse_response_head(block, self._limits)
        else:
            head = parse_request_head(block, self._limits)
            if head.version == "HTTP/1.1" and header(head.headers, "host") is None:
                raise Http1Error("HTTP/1.1 request without Host (RFC 9112 §3.2)")
        self._framing, self._left = body_framing(head, self.request_method)
        interim = isinstance(head, Response) and 100 <= head.status < 200 and head.status != 101
        if interim:
            self._state = _State.HEAD  # an interim response; the final one follows
        else:
            self._state = _STATE_FOR[self._framing]
        return head

    def _chunk_line(self) -> Event | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_CHUNK_LINE:
                raise HeadTooLarge(f"chunk size line longer than {MAX_CHUNK_LINE} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        size = line.split(b";", 1)[0].rstrip(b" \t")
        if not _HEX.match(size):
            raise Http1Error(f"invalid chunk size {line[:40]!r}")
        self._left = int(size, 16)
        if self._left == 0:
            self._state = _State.TRAILERS
            return self._trailers()
        self._state = _State.CHUNK_DATA
        return self._step()

    def _trailers(self) -> Event | None:
        if self._buf.startswith(b"\r\n"):
            del self._buf[:2]
            self._state = _State.DONE
            return EndOfMessage()
        if self._trailer_scan is None:
            self._trailer_scan = HeadScanner(self._limits, "trailer section", skip_empty=False)
        block = self._block(self._trailer_scan)
        if block is None:
            return None
        self._state = _State.DONE
        return EndOfMessage(parse_trailers(block, self._limits))


# --- writing ------------------------------------------------------------------------------------------------------


def _fields(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)


def encode_request(head: Request) -> bytes:
    return f"{head.method} {head.target} {head.version}\r\n".encode("latin-1") + _fields(head.headers) + b"\r\n"


def encode_response(head: Response) -> bytes:
    line = f"{head.version} {head.status} {head.reason}\r\n".encode("latin-1")
    return line + _fields(head.headers) + b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def encode_last_chunk(trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    return b"0\r\n" + _fields(trailers) + b"\r\n"


__all__ = [
    "HOP_BY_HOP",
    "Data",
    "EndOfMessage",
    "Event",
    "Framing",
    "HeadTooLarge",
    "Headers",
    "Http1Error",
    "MessageReader",
    "NotImplementedFraming",
    "Request",
    "Response",
    "VersionNotSupported",
    "absolute_form",
    "body_framing",
    "encode_chunk",
    "encode_last_chunk",
    "encode_request",
    "encode_response",
    "end_to_end",
    "header",
    "keep_alive",
]


def absolute_form(req: Request) -> tuple[Authority, Request]:
    """A forward proxy's request (RFC 9112 §3.2.2 absolute-form `http://host[:port]/path?q`) → the origin to open
    and the request to send it: origin-form target, `Host` replaced by the URI's authority (§3.2.2, RFC 9110 §7.2).
    Only `http`: an `https` origin is reached with CONNECT, so the client does the TLS."""
    scheme, sep, rest = req.target.partition("://")
    if not sep:
        raise Http1Error(f"a proxy request needs an absolute URI (http://host/path), got {req.target[:80]!r}")
    if scheme.lower() != "http":
        raise Http1Error(f"{scheme}:// is not forwarded; use CONNECT for TLS origins (e.g. https_proxy)")
    authority, slash, path = rest.partition("/")
    authority, _, query = authority.partition("?")
    if not authority or "@" in authority:
        raise Http1Error("the URI needs a host and must not carry userinfo")
    has_port = authority.rpartition(":")[2].isdigit() and not authority.endswith("]")
    target = parse_authority(authority if has_port else f"{authority}:80")
    origin = "/" + path if slash else "/"
    origin += f"?{query}" if query else ""
    headers = tuple((k, v) for k, v in req.headers if k.lower() != "host")
    return target, Request(req.method, origin, req.version, (("host", authority), *headers))
