"""HTTP/1.1 CONNECT proxy requests (RFC 9110 §9.3.6, message syntax RFC 9112 §2 to §5) and the proxy's responses.

Incremental: feed bytes until a complete header block arrives; whatever follows it is the start of the tunnelled
stream and is handed back untouched. Only `CONNECT host:port` is parsed here; `hbone http-proxy` hands other methods
(absolute-form `GET http://…`) to the HTTP/1.1 message reader (`hbone.wire.http1`). Line endings must be CRLF: bare
LF/CR are rejected rather than guessed, because lenient line splitting is how request smuggling starts.
"""

from __future__ import annotations

import base64
import binascii
import http
from collections.abc import Iterable
from dataclasses import dataclass

from hbone.errors import BadRequest
from hbone.wire.answers import proxy_status_for, reason_of
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.h1head import HeadLimits, HeadScanner, HeadTooLarge, VersionNotSupported, is_field, parse_request_head
from hbone.wire.h1head import limits as head_limits

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_HEADERS = 100
#: The head over a limit (431): the HTTP/1 head parser's own error, under the name this module always gave it.
HeadersTooLarge = HeadTooLarge


class MethodNotAllowed(BadRequest):
    """A method other than CONNECT (answer 405 with `Allow: CONNECT`, RFC 9110 §15.5.6)."""

    http_status = 405


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """`Proxy-Authorization: Basic` (RFC 7617 §2); bytes that are not UTF-8 survive as surrogate escapes."""

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class HttpConnectRequest:
    target: Authority
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: tuple[tuple[str, str], ...]  # names as sent, values with OWS trimmed
    host: str | None = None
    proxy_authorization: str | None = None
    credentials: BasicCredentials | None = None  # set only for the Basic scheme

    def get(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


class HttpConnectParser:
    """Incremental parser for one CONNECT request head (RFC 9112 §2.1: request-line *( field-line CRLF ) CRLF),
    read by the one HTTP/1 head parser (`hbone.wire.h1head`: each byte scanned once, bounded, strict CRLF)."""

    def __init__(
        self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._limits = head_limits(max_header_bytes, max_headers, max_header_bytes)
        self._scanner = HeadScanner(self._limits, "request head")
        self._buffer = bytearray()
        self._request: HttpConnectRequest | None = None

    @property
    def request(self) -> HttpConnectRequest | None:
        return self._request

    def feed(self, data: bytes) -> HttpConnectRequest | None:
        """Add bytes; return the request once its header block is complete (once only), else None."""
        self._buffer += data
        if self._request is not None:
            return None
        end = self._scanner.find_end(self._buffer)
        if end is None:
            return None
        head = bytes(self._buffer[: end - 4])
        del self._buffer[:end]
        self._request = _connect_request(head, self._limits)
        return self._request

    @property
    def leftover(self) -> bytes:
        """Bytes received after the header block (only meaningful once `feed` returned the request)."""
        return bytes(self._buffer) if self._request is not None else b""

    def take_leftover(self) -> bytes:
        out = self.leftover
        if self._request is not None:
            self._buffer.clear()
        return out


def _connect_request(head: bytes, limits: HeadLimits) -> HttpConnectRequest:
    request = parse_request_head(head, limits)
    if request.method != "CONNECT":
        hint = " (methods are case-sensitive)" if request.method.upper() == "CONNECT" else ""
        raise MethodNotAllowed(f"method {request.method!r} is not supported by this proxy; only CONNECT{hint}")
    target = parse_authority(request.target)
    headers = list(request.headers)
    host = _single(headers, "host")
    proxy_auth = _single(headers, "proxy-authorization")
    if _single(headers, "transfer-encoding") is not None:
        raise BadRequest("CONNECT request must not carry Transfer-Encoding (RFC 9110 §9.3.6)")
    length = _single(headers, "content-length")
    if length is not None and length != "0":
        raise BadRequest(f"CONNECT request must not have content; Content-Length is {length!r}")
    credentials = basic_credentials(proxy_auth) if proxy_auth is not None else None
    return HttpConnectRequest(target, request.version, request.headers, host, proxy_auth, credentials)


def _single(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    if len(values) > 1:
        raise BadRequest(f"request has {len(values)} {name} headers; expected at most one")
    return values[0] if values else None


def basic_credentials(value: str) -> BasicCredentials | None:
    """RFC 7617 §2: `Basic base64(user-id ":" password)`. Other schemes give None (the caller decides)."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    token = token.strip(" ")
    try:
        raw = binascii.a2b_base64(token.encode("latin-1"), strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Proxy-Authorization Basic credentials are not valid base64 (RFC 7617 §2)") from None
    user, colon, password = raw.partition(b":")
    if not colon:
        raise BadRequest("Proxy-Authorization Basic credentials have no ':' between user-id and password")
    return BasicCredentials(user.decode("utf-8", "surrogateescape"), password.decode("utf-8", "surrogateescape"))


def encode_basic(username: str, password: str) -> str:
    """A `Proxy-Authorization` value for tests and clients."""
    raw = f"{username}:{password}".encode("utf-8", "surrogateescape")
    return "Basic " + base64.b64encode(raw).decode("ascii")


# --- responses ----------------------------------------------------------------------------------------------------

REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # 499 and other unregistered codes
        return "Error"


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status) or _phrase(status)}"]
    for name, value in headers:
        if not is_field(name, value):
            raise BadRequest(f"response header {name!r} has an invalid name or value")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def connection_established(headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The 2xx that turns the connection into a tunnel (RFC 9110 §9.3.6)."""
    return _head(200, headers)


def error_response(status: int, reason: str, *, realm: str = "hbone", keep_alive: bool = False) -> bytes:
    """A short text/plain error, `Connection: close` unless `keep_alive` (the connection stays usable, e.g. an
    ingress's 404); 407 adds `Proxy-Authenticate` (RFC 9110 §11.7.1). The one HTTP/1 error answer."""
    body = (reason.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    if status == 407:
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
        headers.append(("Proxy-Authenticate", f'Basic realm="{quoted}", charset="UTF-8"'))
    if status == 405:
        headers.append(("Allow", "CONNECT"))
    return _head(status, headers) + body


def error_response_for(exc: BaseException, *, realm: str = "hbone") -> bytes:
    return error_response(proxy_status_for(exc), reason_of(exc), realm=realm)


__all__ = [
    "BasicCredentials",
    "HeadersTooLarge",
    "HttpConnectParser",
    "HttpConnectRequest",
    "MethodNotAllowed",
    "VersionNotSupported",
    "basic_credentials",
    "connection_established",
    "encode_basic",
    "error_response",
    "error_response_for",
]
