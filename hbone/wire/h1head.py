"""The one HTTP/1.1 head parser (RFC 9112 §2 to §5), sans-IO: request and response heads and trailer sections.

`HeadScanner.find_end(buf)` finds where a head ends in a buffer that grows by reads, looking at each byte once:
it remembers how far it has scanned, so a head trickling in one byte per read costs O(n), not O(n²). While it
scans it enforces what a peer controls: the head's size, the length of the line being received, and strict line
endings (bare LF or CR refused, never guessed: lenient line splitting is how request smuggling starts). The
`parse_*` functions then turn the complete head into a `Request`/`Response` (field count and each line's length
checked, no obs-fold, no whitespace before the colon, no control characters in values).

Errors are `Http1Error` (400; a proxy reading a response answers 502), `HeadTooLarge` (431) and
`VersionNotSupported` (505), each saying precisely what was wrong. Used by `hbone.wire.http1.MessageReader`
(ingress, forward proxy, admin server) and `hbone.wire.httpconnect.HttpConnectParser` (CONNECT proxy).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hbone.errors import BadRequest, LimitExceeded

DEFAULT_MAX_HEAD = 64 * 1024
DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_LINE = 16 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB (RFC 9110 §5.5)
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")  # a line ending that is not CRLF (RFC 9112 §2.2)
_EMPTY_LINES = re.compile(rb"(?:\r\n)+")

Headers = tuple[tuple[str, str], ...]


class Http1Error(BadRequest):
    """A malformed HTTP/1.1 message (400 for requests; a proxy answers 502 when a response is malformed)."""


class HeadTooLarge(LimitExceeded):
    """A head, a line of it, its field count, a chunk line or the trailers over the limit (RFC 6585 §5: 431)."""

    http_status = 431


class VersionNotSupported(Http1Error):
    """An HTTP version other than 1.0/1.1 (RFC 9110 §15.6.6)."""

    http_status = 505


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What one head may hold: bytes (the blank line included), field lines, and bytes per line."""

    max_bytes: int = DEFAULT_MAX_HEAD
    max_fields: int = DEFAULT_MAX_FIELDS
    max_line: int = DEFAULT_MAX_LINE


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


@functools.lru_cache(maxsize=32)
def limits(max_bytes: int, max_fields: int, max_line: int) -> HeadLimits:
    """Shared `HeadLimits` (a reader per request on a busy listener should not build one each time)."""
    return HeadLimits(max_bytes, max_fields, min(max_line, max_bytes))


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` (case-less), or None."""
    name = name.lower()
    return next((v for k, v in headers if k.lower() == name), None)


class HeadScanner:
    """Finds the end of one head at the start of a growing buffer; call `find_end` after every read.

    `skip_empty` drops empty lines before a request line (RFC 9112 §2.2), counted against the size limit.
    """

    __slots__ = ("_line_start", "_scanned", "_skipped", "limits", "skip_empty", "what")

    def __init__(self, limits: HeadLimits = HeadLimits(), what: str = "request head", *, skip_empty: bool = True):
        self.limits = limits
        self.what = what
        self.skip_empty = skip_empty
        self._scanned = self._line_start = self._skipped = 0

    def reset(self) -> None:
        """Start on the next head (the caller removed the previous one from its buffer)."""
        self._scanned = 0  # bytes of the buffer already looked at
        self._line_start = 0  # where the line being received starts
        self._skipped = 0

    def find_end(self, buf: bytearray) -> int | None:
        """The offset just past the blank line that ends the head, or None while more bytes are needed."""
        limit = self.limits.max_bytes
        if self._scanned == 0 and self.skip_empty and (empty := _EMPTY_LINES.match(buf)) is not None:
            del buf[: empty.end()]
            self._skipped += empty.end()
            if self._skipped > limit:
                raise HeadTooLarge(f"more than {limit} bytes of empty lines before the request")
        start = self._scanned
        stop = min(len(buf), limit + 4)  # nothing past the limit is looked at
        if stop and buf[stop - 1] == 0x0D:
            stop -= 1  # a CR at the end is judged with the byte that follows it
        end = buf.find(b"\r\n\r\n", max(start - 3, 0), stop)
        scan_to = end + 4 if end >= 0 else stop  # what follows the head (a body, tunnel bytes) is not ours to judge
        # Every LF must follow a CR and every CR precede an LF: three counts in C decide it (the region never
        # starts after or ends with a lone CR, see `stop`); the regex only runs to name the offending byte.
        crlf = buf.count(b"\r\n", start, scan_to)
        ok = buf.count(b"\n", start, scan_to) == crlf and buf.count(b"\r", start, scan_to) == crlf
        if not ok and (bare := _BARE.search(buf, start, scan_to)) is not None:
            kind = "LF" if bare.group() == b"\n" else "CR"
            raise Http1Error(
                f"bare {kind} at byte {bare.start()} of the {self.what}; lines must end with CRLF (RFC 9112 §2.2)"
            )
        if end >= 0:
            if end + 4 > limit:
                raise HeadTooLarge(f"{self.what} is {end + 4} bytes; the maximum is {limit}")
            self.reset()
            return end + 4
        if len(buf) > limit:
            raise HeadTooLarge(f"{self.what} exceeds {limit} bytes")
        newline = buf.rfind(b"\n", start, stop)
        if newline >= 0:
            self._line_start = newline + 1
        if stop - self._line_start > self.limits.max_line:
            raise HeadTooLarge(f"a line of the {self.what} is longer than {self.limits.max_line} bytes")
        self._scanned = stop
        return None


def _lines(block: bytes, limits: HeadLimits, what: str) -> list[bytes]:
    lines = block.split(b"\r\n")
    if len(lines) - 1 > limits.max_fields:
        raise HeadTooLarge(f"{what} has {len(lines) - 1} header fields; the maximum is {limits.max_fields}")
    longest = max(map(len, lines))
    if longest > limits.max_line:
        raise HeadTooLarge(f"a line of the {what} is {longest} bytes; the maximum is {limits.max_line}")
    return lines


def parse_request_head(block: bytes, limits: HeadLimits = HeadLimits()) -> Request:
    """A request head without its final CRLFCRLF: request-line, then field lines (RFC 9112 §3, §5)."""
    first, *rest = _lines(block, limits, "request")
    parts = first.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise Http1Error(f"request line {_show(first, 80)} is not 'METHOD SP target SP HTTP/x.y' (RFC 9112 §3)")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise Http1Error(f"request method {_show(method, 20)} is not a token (RFC 9110 §9.1)")
    if _BAD_TARGET.search(target):
        raise Http1Error(f"request target {_show(target, 80)} has a space or control character (RFC 9112 §3.2)")
    return Request(method.decode("ascii"), target.decode("latin-1"), _version(version, "request line"), fields(rest))


def parse_response_head(block: bytes, limits: HeadLimits = HeadLimits()) -> Response:
    """A response head without its final CRLFCRLF: status-line, then field lines (RFC 9112 §4, §5)."""
    first, *rest = _lines(block, limits, "response")
    version, _, tail = first.partition(b" ")
    code, _, reason = tail.partition(b" ")
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or _BAD_VALUE.search(reason):
        raise Http1Error(f"status line {_show(first, 80)} is not 'HTTP/x.y SP 3DIGIT SP reason' (RFC 9112 §4)")
    return Response(int(code), reason.decode("latin-1"), _version(version, "status line"), fields(rest))


def parse_trailers(block: bytes, limits: HeadLimits = HeadLimits()) -> Headers:
    """A non-empty trailer section without its final CRLFCRLF (RFC 9112 §7.1.2)."""
    return fields(_lines(block, limits, "trailer section"), first_line=1)


def _show(data: bytes, limit: int) -> str:
    """Peer bytes quoted for a message: cut short, as text (Latin-1 maps every byte)."""
    return repr(data[:limit].decode("latin-1"))


def _version(version: bytes, where: str) -> str:
    if not _VERSION.match(version):
        raise Http1Error(f"{where} version {_show(version, 20)} is not HTTP/x.y (RFC 9112 §2.3)")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise VersionNotSupported(f"HTTP version {version.decode('ascii')} is not supported; expected HTTP/1.1")
    return version.decode("ascii")


def fields(lines: list[bytes], first_line: int = 2) -> Headers:
    """Field lines (RFC 9112 §5): `name: value`, no obs-fold, no space before the colon, no CTLs in values."""
    out = []
    for number, line in enumerate(lines, start=first_line):
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):  # the common path tests only this; the rest says what is wrong
            if line[:1] in (b" ", b"\t"):
                raise Http1Error(f"line {number} starts with whitespace: obsolete line folding (RFC 9112 §5.2)")
            if not colon:
                raise Http1Error(f"header line {number} {_show(line, 40)} has no ':'")
            raise Http1Error(f"header line {number}: field name {_show(name, 40)} is not a token (RFC 9112 §5.1)")
        value = value.strip(b" \t")
        bad = _BAD_VALUE.search(value)
        if bad is not None:
            raise Http1Error(
                f"header {name.decode('ascii')!r} contains control character {_show(bad.group(), 1)} (RFC 9110 §5.5)"
            )
        out.append((name.decode("ascii"), value.decode("latin-1")))
    return tuple(out)


def is_field(name: str, value: str) -> bool:
    """Whether `name: value` may be written as it is: a token name and no control characters in the value."""
    raw_name, raw_value = name.encode("latin-1", "replace"), value.encode("latin-1", "replace")
    return _TOKEN.match(raw_name) is not None and _BAD_VALUE.search(raw_value) is None and b"\r" not in raw_value


__all__ = [
    "HeadLimits",
    "HeadScanner",
    "HeadTooLarge",
    "Headers",
    "Http1Error",
    "Request",
    "Response",
    "VersionNotSupported",
    "fields",
    "header",
    "is_field",
    "limits",
    "parse_request_head",
    "parse_response_head",
    "parse_trailers",
]
