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

from hbone.errors import BadRequest
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.httpconnect import HeadersTooLarge

DEFAULT_MAX_HEAD = 64 * 1024
DEFAULT_MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/1\.([01])\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB (RFC 9110 §5.5)
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
#: RFC 9110 §7.6.1 connection-specific fields; never forwarded (plus whatever `Connection` names).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer",
     "proxy-authenticate", "proxy-authorization"}
)  # fmt: skip

Headers = tuple[tuple[str, str], ...]


class Http1Error(BadRequest):
    """A malformed HTTP/1.1 message (400 for requests; a proxy answers 502 when a response is malformed)."""


# The head, a chunk line or the trailers over the limit (431): the same error the CONNECT parser raises, so
# callers map both parsers' limit failures the same way.
HeadTooLarge = HeadersTooLarge


class NotImplementedFraming(Http1Error):
    """A Transfer-Encoding other than chunked on a request (RFC 9112 §6.1: 501)."""

    http_status = 501


class VersionNotSupported(Http1Error):
    http_status = 505


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str  # "HTTP/1.1" | "HTTP/1.0"
    headers: Headers

    def get(self, name: str) -> str | None:
        return header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    version: str
    headers: Headers

    def get(self, name: str) -> str | None:
        return header(self.headers, name)


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


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` (case-less), or None."""
    return next((v for k, v in headers if k.lower() == name), None)


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


@dataclass
class MessageReader:
    """Incremental reader of one message at a time. `response=True` reads responses to `request_method`."""

    response: bool = False
    max_head: int = DEFAULT_MAX_HEAD
    max_headers: int = DEFAULT_MAX_HEADERS
    request_method: str = "GET"
    _buf: bytearray = field(default_factory=bytearray)
    _state: _State = _State.HEAD
    _framing: Framing = Framing.NONE
    _left: int = 0

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

    def _line_block(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > limit:
                raise HeadTooLarge(f"{what} larger than {limit} bytes")
            return None
        if end + 4 > limit:
            raise HeadTooLarge(f"{what} larger than {limit} bytes")
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        return block

    def _head(self) -> Event | None:
        while self._buf.startswith(b"\r\n"):  # RFC 9112 §2.2: ignore empty lines before a request line
            del self._buf[:2]
        block = self._line_block(self.max_head, "message head")
        if block is None:
            return None
        first, _, rest = block.partition(b"\r\n")
        headers = parse_fields(rest.split(b"\r\n") if rest else [], self.max_headers)
        head: Request | Response = _status_line(first, headers) if self.response else _request_line(first, headers)
        if isinstance(head, Request) and head.version == "HTTP/1.1" and header(headers, "host") is None:
            raise Http1Error("HTTP/1.1 request without Host (RFC 9112 §3.2)")
        self._framing, self._left = body_framing(head, self.request_method)
        interim = isinstance(head, Response) and 100 <= head.status < 200 and head.status != 101
        if interim:
            self._state = _State.HEAD  # an interim response; the final one follows
        else:
            self._state = {
                Framing.NONE: _State.BODY,  # zero bytes left: the next step ends the message
                Framing.LENGTH: _State.BODY,
                Framing.UNTIL_CLOSE: _State.BODY,
                Framing.CHUNKED: _State.CHUNK_LINE,
            }[self._framing]
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
        block = self._line_block(self.max_head, "trailer section")
        if block is None:
            return None
        self._state = _State.DONE
        return EndOfMessage(parse_fields(block.split(b"\r\n"), self.max_headers))


def _request_line(line: bytes, headers: Headers) -> Request:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Http1Error(f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise Http1Error(f"invalid method {method[:20]!r}")
    if not target or _BAD_TARGET.search(target):
        raise Http1Error("invalid request target")
    if not _VERSION.match(version):
        if version.startswith(b"HTTP/"):
            raise VersionNotSupported(f"{version.decode('latin-1')} is not supported")
        raise Http1Error(f"malformed request line {line[:80]!r}")
    return Request(method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), headers)


def _status_line(line: bytes, headers: Headers) -> Response:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not _VERSION.match(version) or len(code) != 3 or not code.isdigit() or _BAD_VALUE.search(reason):
        raise Http1Error(f"malformed status line {line[:80]!r}")
    return Response(int(code), reason.decode("latin-1"), version.decode("ascii"), headers)


def parse_fields(lines: list[bytes], max_fields: int = DEFAULT_MAX_HEADERS) -> Headers:
    """Field lines (RFC 9112 §5): `name: value`, no obs-fold, no space before the colon, no CTLs."""
    if len(lines) > max_fields:
        raise HeadTooLarge(f"more than {max_fields} header fields")
    out = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            if line[:1] in (b" ", b"\t"):
                raise Http1Error("obsolete line folding is not accepted (RFC 9112 §5.2)")
            raise Http1Error(f"malformed header field {line[:60]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value) or b"\r" in value:
            raise Http1Error(f"invalid characters in header {name.decode('ascii')!r}")
        out.append((name.decode("ascii"), value.decode("latin-1")))
    return tuple(out)


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
    "Data",
    "EndOfMessage",
    "Framing",
    "HeadTooLarge",
    "Http1Error",
    "MessageReader",
    "Request",
    "Response",
    "body_framing",
    "encode_chunk",
    "encode_last_chunk",
    "encode_request",
    "encode_response",
    "end_to_end",
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
