"""gRPC request metadata: custom metadata, ``grpc-timeout``, and request/response header lists.

Rules from grpc/doc/PROTOCOL-HTTP2.md ("Requests", "Responses"): header names are ``[0-9a-z_.-]+``; ASCII values
are printable ASCII (0x20-0x7E); names ending in ``-bin`` carry bytes, base64-encoded on the wire (accept padded
and unpadded, emit unpadded); ``grpc-timeout`` is at most 8 digits plus a unit (H M S m u n). Connection-specific
fields are forbidden by RFC 9113 §8.2.2 and pseudo-headers are not metadata at all.

Sans-IO: header lists are ``(name, value)`` pairs of ``str`` (we also accept ``bytes`` as h2 hands them over).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from hbone.errors import GrpcError, GrpcStatus, ProtocolError
from hbone.grpc.framing import SUPPORTED_ENCODINGS, parse_accept_encoding

__all__ = [
    "DEFAULT_USER_AGENT",
    "HeaderLike",
    "InvalidMetadata",
    "Metadata",
    "MetadataLike",
    "RequestInfo",
    "RequestRejected",
    "decode_bin_value",
    "decode_timeout",
    "encode_bin_value",
    "encode_timeout",
    "header_text",
    "is_grpc_content_type",
    "is_reserved_header",
    "request_headers",
    "response_headers",
    "validate_key",
    "validate_request_headers",
]

DEFAULT_USER_AGENT = "hbone-grpc/0.1"

MetadataValue: TypeAlias = str | bytes
MetadataLike: TypeAlias = "Metadata | Mapping[str, MetadataValue] | Iterable[tuple[str, MetadataValue]]"
HeaderLike: TypeAlias = tuple[str | bytes, str | bytes]

_KEY_RE = re.compile(r"[0-9a-z_.\-]+")
_VALUE_RE = re.compile(r"[\x20-\x7e]*")
_TIMEOUT_RE = re.compile(r"([0-9]{1,8})([HMSmun])")
# Nanoseconds per timeout unit, coarsest first.
_UNITS: tuple[tuple[str, int], ...] = (
    ("H", 3_600_000_000_000),
    ("M", 60_000_000_000),
    ("S", 1_000_000_000),
    ("m", 1_000_000),
    ("u", 1_000),
    ("n", 1),
)
_UNIT_NS = dict(_UNITS)
_MAX_TIMEOUT_VALUE = 99_999_999
_PATH_RE = re.compile(r"/([^/?#]+)/([^/?#]+)")

# RFC 9113 §8.2.2 connection-specific fields, plus fields HTTP/2 or gRPC itself owns.
_CONNECTION_HEADERS = frozenset({"connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"})
_TRANSPORT_HEADERS = frozenset({"content-type", "te", "host", "content-length"})
# grpc-* names an application may set itself (retry and tracing keys that the runtimes pass through).
_ALLOWED_GRPC_HEADERS = frozenset({"grpc-trace-bin", "grpc-tags-bin", "grpc-previous-rpc-attempts"})


class InvalidMetadata(ProtocolError):
    """Metadata that cannot be sent or was received malformed (ends the call with INTERNAL)."""


def header_text(value: str | bytes) -> str:
    """h2 hands headers over as bytes; keep them lossless as str (non-UTF-8 bytes become surrogates)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def validate_key(key: str) -> str:
    """Return ``key`` if it is a legal metadata name, else raise InvalidMetadata."""
    if not _KEY_RE.fullmatch(key):
        raise InvalidMetadata(f"metadata key {key!r} must be non-empty lowercase [0-9a-z_.-]")
    return key


def is_reserved_header(key: str) -> bool:
    """True for names the gRPC runtime owns, which user metadata may not set (user-agent is merged instead)."""
    if key.startswith(":") or key in _CONNECTION_HEADERS or key in _TRANSPORT_HEADERS:
        return True
    return key.startswith("grpc-") and key not in _ALLOWED_GRPC_HEADERS


def encode_bin_value(value: bytes) -> str:
    """Base64 (RFC 4648 §4, standard alphabet) without padding, as the spec says to emit."""
    return binascii.b2a_base64(value, newline=False).rstrip(b"=").decode("ascii")


def decode_bin_value(value: str | bytes) -> bytes:
    """Decode one ``-bin`` value, padded or not; several values joined by "," are concatenated in order."""
    raw = value.encode("ascii", "replace") if isinstance(value, str) else value
    out = bytearray()
    for chunk in raw.split(b","):
        part = chunk.strip()
        if len(part) % 4 == 1:
            raise InvalidMetadata("malformed base64 in binary metadata (bad length)")
        try:
            out += binascii.a2b_base64(part + b"=" * (-len(part) % 4), strict_mode=True)
        except binascii.Error as exc:
            raise InvalidMetadata(f"malformed base64 in binary metadata: {exc}") from None
    return bytes(out)


def _check_pair(key: str, value: MetadataValue) -> tuple[str, MetadataValue]:
    validate_key(key)
    if key.endswith("-bin"):
        if isinstance(value, str):
            raise InvalidMetadata(f"metadata key {key!r} ends in -bin so its value must be bytes")
        return key, bytes(value)
    if not isinstance(value, str):
        raise InvalidMetadata(f"metadata key {key!r} needs a str value (use a -bin key for bytes)")
    if not _VALUE_RE.fullmatch(value):
        raise InvalidMetadata(f"metadata value for {key!r} must be printable ASCII (0x20-0x7E)")
    if value != value.strip(" \t"):
        # RFC 9113 §8.2.1: a field value must not start or end with whitespace; h2 would refuse to send it.
        raise InvalidMetadata(f"metadata value for {key!r} has leading or trailing whitespace")
    return key, value


@dataclass(frozen=True)
class Metadata:
    """Ordered multi-map of metadata: ``str`` values for ASCII keys, ``bytes`` for ``-bin`` keys. Immutable."""

    pairs: tuple[tuple[str, MetadataValue], ...] = ()

    def __post_init__(self) -> None:
        for key, value in self.pairs:
            _check_pair(key, value)

    @classmethod
    def of(cls, source: MetadataLike = ()) -> Metadata:
        """Build from a Metadata, a mapping, or an iterable of pairs (validated)."""
        if isinstance(source, Metadata):
            return source
        items = source.items() if isinstance(source, Mapping) else source
        return cls(tuple((k, v) for k, v in items))

    @classmethod
    def from_headers(cls, headers: Iterable[HeaderLike]) -> Metadata:
        """The custom metadata among received headers: reserved names skipped, ``-bin`` values decoded."""
        pairs: list[tuple[str, MetadataValue]] = []
        for raw_key, raw_value in headers:
            key = header_text(raw_key)
            if is_reserved_header(key) or key == "user-agent":
                continue
            if key.endswith("-bin"):
                pairs.append((validate_key(key), decode_bin_value(raw_value)))
            else:
                pairs.append(_check_pair(key, header_text(raw_value)))
        return cls(tuple(pairs))

    def to_headers(self) -> list[tuple[str, str]]:
        """Wire form. Reserved names are refused here, at the one place metadata becomes headers."""
        out: list[tuple[str, str]] = []
        for key, value in self.pairs:
            if is_reserved_header(key):
                raise InvalidMetadata(f"metadata key {key!r} is reserved for the gRPC transport")
            out.append((key, encode_bin_value(value) if isinstance(value, bytes) else value))
        return out

    def get(self, key: str, default: MetadataValue | None = None) -> MetadataValue | None:
        """Last value for ``key`` (like grpcio's dict-style access), or ``default``."""
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[MetadataValue]:
        return [v for k, v in self.pairs if k == key]

    def add(self, key: str, value: MetadataValue) -> Metadata:
        """A copy with one more pair."""
        return Metadata((*self.pairs, (key, value)))

    def without(self, key: str) -> Metadata:
        return Metadata(tuple(p for p in self.pairs if p[0] != key))

    def __iter__(self) -> Iterator[tuple[str, MetadataValue]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)


def encode_timeout(seconds: float) -> str:
    """``grpc-timeout`` value: at most 8 digits, so pick the unit.

    Prefer the coarsest unit that states the timeout exactly ("1S", "1500m"); otherwise the finest unit that fits
    in 8 digits, rounding up so the peer never sees a shorter deadline. Non-positive timeouts become "1n" (the
    value must be positive; the deadline has effectively passed). Beyond 99999999H we clamp.
    """
    ns = max(1, round(seconds * 1_000_000_000))
    for unit, per in _UNITS:
        if ns % per == 0 and ns // per <= _MAX_TIMEOUT_VALUE:
            return f"{ns // per}{unit}"
    for unit, per in reversed(_UNITS):
        value = -(-ns // per)
        if value <= _MAX_TIMEOUT_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_TIMEOUT_VALUE}H"


def decode_timeout(value: str | bytes) -> float:
    """Parse a ``grpc-timeout`` value to seconds; anything but 1-8 digits and a unit is InvalidMetadata."""
    text = header_text(value)
    m = _TIMEOUT_RE.fullmatch(text)
    if m is None:
        raise InvalidMetadata(f"malformed grpc-timeout {text!r}")
    return int(m.group(1)) * _UNIT_NS[m.group(2)] / 1_000_000_000


def response_headers(
    encoding: str | None = None,
    metadata: MetadataLike = (),
    *,
    accept_encoding: Iterable[str] = ("gzip",),
    content_type: str = "application/grpc",
) -> list[tuple[str, str]]:
    """Response-Headers: ``:status 200``, content-type, optional encodings, then custom metadata."""
    headers = [(":status", "200"), ("content-type", content_type)]
    if encoding and encoding != "identity":
        headers.append(("grpc-encoding", encoding))
    accept = ",".join(accept_encoding)
    if accept:
        headers.append(("grpc-accept-encoding", accept))
    headers += Metadata.of(metadata).to_headers()
    return headers


def accept_encoding_of(headers: Iterable[HeaderLike]) -> tuple[str, ...]:
    """The ``grpc-accept-encoding`` codings among ``headers`` (empty when absent)."""
    for k, v in headers:
        if header_text(k) == "grpc-accept-encoding":
            return parse_accept_encoding(header_text(v))
    return ()


def is_grpc_content_type(value: str) -> bool:
    """``application/grpc`` optionally followed by ``+subtype`` (proto, json, custom) or ``;params``."""
    ct = value.strip().lower()
    return ct == "application/grpc" or ct.startswith(("application/grpc+", "application/grpc;"))


def request_headers(
    method_path: str,
    authority: str,
    *,
    scheme: str = "http",
    timeout: float | None = None,
    metadata: MetadataLike = (),
    encoding: str | None = None,
    accept_encoding: Iterable[str] = ("gzip",),
    user_agent: str = DEFAULT_USER_AGENT,
    content_type: str = "application/grpc",
) -> list[tuple[str, str]]:
    """Request-Headers in spec order: pseudo-headers, te, content-type, grpc-* fields, then custom metadata.

    A ``user-agent`` in ``metadata`` is not an error: like grpc-core it is prepended to ours.
    """
    if not _PATH_RE.fullmatch(method_path):
        raise InvalidMetadata(f"method path {method_path!r} is not of the form /package.Service/Method")
    if scheme not in ("http", "https"):
        raise InvalidMetadata(f"scheme must be http or https, not {scheme!r}")
    if not is_grpc_content_type(content_type):
        raise InvalidMetadata(f"content-type {content_type!r} is not application/grpc[+subtype]")
    md = Metadata.of(metadata)
    app_agents = md.get_all("user-agent")
    if app_agents:
        user_agent = " ".join([*(str(a) for a in app_agents), user_agent])
        md = md.without("user-agent")
    headers = [
        (":method", "POST"),
        (":scheme", scheme),
        (":path", method_path),
        (":authority", authority),
        ("te", "trailers"),
        ("content-type", content_type),
    ]
    if user_agent:
        headers.append(("user-agent", user_agent))
    if timeout is not None:
        headers.append(("grpc-timeout", encode_timeout(timeout)))
    if encoding and encoding.lower() != "identity":
        headers.append(("grpc-encoding", encoding.lower()))
    accept = ",".join(accept_encoding)
    if accept:
        headers.append(("grpc-accept-encoding", accept))
    headers += md.to_headers()
    return headers


class RequestRejected(GrpcError):
    """A request the server must refuse before running a handler.

    ``http_status`` is 200 for a normal trailers-only gRPC error, or the HTTP status the spec asks for
    (405 for a non-POST method, 415 for a non-gRPC content-type).
    """

    def __init__(self, status: GrpcStatus, message: str, *, http_status: int = 200) -> None:
        super().__init__(status, message)
        self.http_status = http_status


@dataclass(frozen=True)
class RequestInfo:
    """A validated gRPC request's headers, parsed into values the server can use directly."""

    path: str
    service: str
    method: str
    timeout: float | None
    metadata: Metadata
    encoding: str | None
    accept_encoding: tuple[str, ...]
    content_type: str
    authority: str | None
    scheme: str | None = None
    user_agent: str | None = None


def validate_request_headers(
    headers: Iterable[HeaderLike],
    *,
    require_te: bool = True,
    supported_encodings: Iterable[str] = SUPPORTED_ENCODINGS,
) -> RequestInfo:
    """Check a request's headers (PROTOCOL-HTTP2.md "Requests"); raise RequestRejected with the right code.

    Non-POST is HTTP 405 and a non-gRPC content-type HTTP 415 (the spec's SHOULD); a malformed path or an
    unsupported grpc-encoding is UNIMPLEMENTED (grpc-go does the same); a missing ``te: trailers``, a bad
    grpc-timeout or malformed metadata is INTERNAL. ``require_te=False`` tolerates a missing te as grpc-go does.
    """
    # First occurrence wins for the single-valued fields; every pair is kept for metadata.
    pairs = [(header_text(k), v) for k, v in headers]
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key not in fields:
            fields[key] = header_text(value)

    method = fields.get(":method")
    if method != "POST":
        raise RequestRejected(GrpcStatus.INTERNAL, f"invalid method {method!r}, gRPC needs POST", http_status=405)
    content_type = fields.get("content-type", "")
    if not is_grpc_content_type(content_type):
        raise RequestRejected(
            GrpcStatus.INTERNAL, f"invalid gRPC request content-type {content_type!r}", http_status=415
        )
    path = fields.get(":path", "")
    m = _PATH_RE.fullmatch(path)
    if m is None:
        raise RequestRejected(GrpcStatus.UNIMPLEMENTED, f"malformed method name: {path!r}")
    te = fields.get("te")
    if (te is None and require_te) or (te is not None and te.strip().lower() != "trailers"):
        raise RequestRejected(GrpcStatus.INTERNAL, f"te header must be 'trailers', got {te!r}")
    try:
        timeout = decode_timeout(fields["grpc-timeout"]) if "grpc-timeout" in fields else None
        metadata = Metadata.from_headers(pairs)
    except InvalidMetadata as exc:
        raise RequestRejected(GrpcStatus.INTERNAL, str(exc)) from None
    encoding = fields.get("grpc-encoding", "").strip().lower() or None
    if encoding == "identity":
        encoding = None
    if encoding is not None and encoding not in {e.lower() for e in supported_encodings}:
        raise RequestRejected(GrpcStatus.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported")
    return RequestInfo(
        path=path,
        service=m.group(1),
        method=m.group(2),
        timeout=timeout,
        metadata=metadata,
        encoding=encoding,
        accept_encoding=parse_accept_encoding(fields.get("grpc-accept-encoding")),
        content_type=content_type,
        authority=fields.get(":authority") or fields.get("host"),
        scheme=fields.get(":scheme"),
        user_agent=fields.get("user-agent"),
    )
