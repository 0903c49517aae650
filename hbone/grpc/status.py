"""gRPC call status: trailers, trailers-only responses, and reading what a server sent back.

Wire rules from grpc/doc/PROTOCOL-HTTP2.md ("Responses"): Trailers are ``grpc-status`` (decimal), optional
``grpc-message`` (UTF-8, then percent-encoded: bytes outside 0x20-0x7E and "%" become "%XX"), optional
``grpc-status-details-bin`` (a serialised google.rpc.Status) and custom metadata. A Trailers-Only response puts
``:status 200``, content-type and the trailers in one HEADERS frame with END_STREAM. When ``grpc-status`` is
missing, the HTTP status decides (grpc/doc/http-grpc-status-mapping.md).

Decoding never raises: a peer's garbage turns into an INTERNAL or UNKNOWN `Status`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hbone.errors import GrpcError, GrpcStatus, H2ErrorCode, HboneError, StreamReset
from hbone.grpc.framing import parse_accept_encoding
from hbone.grpc.metadata import (
    HeaderLike,
    InvalidMetadata,
    Metadata,
    MetadataLike,
    decode_bin_value,
    encode_bin_value,
    header_text,
    is_grpc_content_type,
)

__all__ = [
    "ResponseInfo",
    "Status",
    "decode_grpc_message",
    "encode_grpc_message",
    "parse_response_headers",
    "parse_trailers",
    "rejection_headers",
    "status_from_exception",
    "status_from_h2_error",
    "status_from_http",
    "trailers",
    "trailers_only",
]

_HTTP_TO_GRPC = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}
_PERCENT_RE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Bytes that stay literal in grpc-message: 0x20-0x7E except "%".
_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}
_HEX = "0123456789ABCDEF"


@dataclass(frozen=True)
class Status:
    """The outcome of a call. ``details`` is a serialised google.rpc.Status (``grpc-status-details-bin``)."""

    code: GrpcStatus
    message: str = ""
    details: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.code is GrpcStatus.OK

    def to_error(self) -> GrpcError:
        return GrpcError(self.code, self.message, self.details)

    def rich_details(self) -> Any:
        """``details`` parsed as google.rpc.Status (imported lazily), or None when absent or unparseable."""
        if not self.details:
            return None
        from google.protobuf.message import DecodeError
        from google.rpc import status_pb2

        msg = status_pb2.Status()
        try:
            msg.ParseFromString(self.details)
        except DecodeError:
            return None
        return msg


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message: UTF-8 first, then every byte outside 0x20-0x7E, and "%", as %XX."""
    raw = message.encode("utf-8", "surrogatepass")
    if all(b in _UNRESERVED for b in raw):
        return message
    return "".join(chr(b) if b in _UNRESERVED else f"%{_HEX[b >> 4]}{_HEX[b & 15]}" for b in raw)


def decode_grpc_message(value: str | bytes) -> str:
    """Percent-decode leniently: valid %XX escapes are decoded, broken ones kept as-is, bad UTF-8 replaced.

    The spec says a decoder MUST NOT fail or discard the message on invalid input.
    """
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"%" in raw:
        raw = _PERCENT_RE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return raw.decode("utf-8", "replace")


def trailers(status: Status, metadata: MetadataLike = ()) -> list[tuple[str, str]]:
    """Trailers: grpc-status, grpc-message (only if non-empty), grpc-status-details-bin, custom metadata."""
    out = [("grpc-status", str(int(status.code)))]
    if status.message:
        out.append(("grpc-message", encode_grpc_message(status.message)))
    if status.details:
        out.append(("grpc-status-details-bin", encode_bin_value(status.details)))
    out += Metadata.of(metadata).to_headers()
    return out


def trailers_only(
    status: Status,
    metadata: MetadataLike = (),
    *,
    http_status: int = 200,
    content_type: str = "application/grpc",
) -> list[tuple[str, str]]:
    """A Trailers-Only response: one HEADERS frame, sent with END_STREAM."""
    return [(":status", str(http_status)), ("content-type", content_type), *trailers(status, metadata)]


def rejection_headers(error: HboneError, *, accept_encoding: Iterable[str] = ("gzip",)) -> list[tuple[str, str]]:
    """Trailers-only answer for a request refused before any handler ran (e.g. `RequestRejected`).

    Carries the error's HTTP status (405/415 where the spec asks for one) and ``grpc-accept-encoding`` so a
    client refused for its compression learns what we accept (spec: "Compression").
    """
    headers = trailers_only(status_from_exception(error), http_status=getattr(error, "http_status", 200))
    accept = ",".join(accept_encoding)
    if accept:
        headers.insert(2, ("grpc-accept-encoding", accept))
    return headers


def status_from_http(http_status: int, message: str = "") -> Status:
    """http-grpc-status-mapping.md: the gRPC status for an HTTP response that carried no grpc-status."""
    code = _HTTP_TO_GRPC.get(http_status, GrpcStatus.UNKNOWN)
    return Status(code, message or f"HTTP status {http_status} without grpc-status")


def status_from_exception(exc: BaseException) -> Status:
    """The Status a call ends with for ``exc``, the one mapping from an exception to a gRPC status: GrpcError keeps
    its own, a stream reset maps its code (PROTOCOL-HTTP2.md "Errors"), other hbone errors use grpc_status (a lost
    connection: UNAVAILABLE), anything else is UNKNOWN."""
    if isinstance(exc, GrpcError):
        return Status(exc.status, exc.message, exc.details)
    if isinstance(exc, StreamReset):
        return status_from_h2_error(exc.code, str(exc))
    if isinstance(exc, HboneError):
        return Status(GrpcStatus(exc.grpc_status), str(exc))
    return Status(GrpcStatus.UNKNOWN, f"{type(exc).__name__}: {exc}")


# PROTOCOL-HTTP2.md "Errors": how a RST_STREAM / GOAWAY code reaches the application of a gRPC call.
_H2_TO_GRPC: dict[int, GrpcStatus] = {
    H2ErrorCode.REFUSED_STREAM: GrpcStatus.UNAVAILABLE,
    H2ErrorCode.CANCEL: GrpcStatus.CANCELLED,
    H2ErrorCode.ENHANCE_YOUR_CALM: GrpcStatus.RESOURCE_EXHAUSTED,
    H2ErrorCode.INADEQUATE_SECURITY: GrpcStatus.PERMISSION_DENIED,
}


def status_from_h2_error(code: int, message: str = "") -> Status:
    """The status of a call whose stream was reset with ``code`` (PROTOCOL-HTTP2.md "Errors"; others INTERNAL)."""
    try:
        name = H2ErrorCode(code).name
    except ValueError:
        name = f"0x{code:x}"
    return Status(_H2_TO_GRPC.get(code, GrpcStatus.INTERNAL), message or f"stream reset with {name}")


def _parse_code(value: str) -> Status | GrpcStatus:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return Status(GrpcStatus.INTERNAL, f"malformed grpc-status {value!r}")
    try:
        return GrpcStatus(int(text))
    except ValueError:
        # A code from a newer spec or a broken peer: grpcio reports these as UNKNOWN.
        return Status(GrpcStatus.UNKNOWN, f"unknown grpc-status {text}")


def parse_trailers(headers: Iterable[HeaderLike]) -> tuple[Status, Metadata]:
    """Status and custom metadata from trailers, or from a trailers-only HEADERS frame. Never raises.

    A missing grpc-status falls back to the HTTP status when one is present and not 200, else UNKNOWN.
    """
    pairs = [(header_text(k), v) for k, v in headers]
    fields: dict[str, str | bytes] = {}
    for k, v in pairs:
        fields.setdefault(k, v)
    message = decode_grpc_message(fields["grpc-message"]) if "grpc-message" in fields else ""
    try:
        metadata = Metadata.from_headers(pairs)
    except InvalidMetadata:
        metadata = Metadata()  # keep the status; bad metadata is the lesser problem
    details: bytes | None = None
    if "grpc-status-details-bin" in fields:
        try:
            details = decode_bin_value(fields["grpc-status-details-bin"])
        except InvalidMetadata:
            details = None

    if "grpc-status" not in fields:
        http = header_text(fields.get(":status", "")).strip()
        if http and http != "200":
            code = int(http) if http.isascii() and http.isdigit() else 0
            return status_from_http(code, message), metadata
        return Status(GrpcStatus.UNKNOWN, message or "server sent no grpc-status"), metadata
    parsed = _parse_code(header_text(fields["grpc-status"]))
    if isinstance(parsed, Status):
        return Status(parsed.code, f"{parsed.message}: {message}" if message else parsed.message), metadata
    return Status(parsed, message, details), metadata


@dataclass(frozen=True)
class ResponseInfo:
    """A normal (not trailers-only) response's headers."""

    encoding: str | None
    accept_encoding: tuple[str, ...]
    content_type: str
    metadata: Metadata


def parse_response_headers(headers: Iterable[HeaderLike]) -> ResponseInfo:
    """Check Response-Headers that did not end the stream; raise GrpcError if this is not a gRPC response.

    Like grpc-go: a non-200 status maps through http-grpc-status-mapping.md; 200 with a non-gRPC content-type
    is UNKNOWN; a missing :status is INTERNAL.
    """
    pairs = [(header_text(k), header_text(v)) for k, v in headers]
    fields: dict[str, str] = {}
    for k, v in pairs:
        fields.setdefault(k, v)
    http = fields.get(":status")
    if http is None:
        raise GrpcError(GrpcStatus.INTERNAL, "response without :status")
    if http != "200":
        code = int(http) if http.isascii() and http.isdigit() else 0
        raise status_from_http(code, f"unexpected HTTP status {http}").to_error()
    content_type = fields.get("content-type", "")
    if not is_grpc_content_type(content_type):
        raise GrpcError(GrpcStatus.UNKNOWN, f"unexpected content-type {content_type!r}")
    try:
        metadata = Metadata.from_headers(pairs)
    except InvalidMetadata as exc:
        raise GrpcError(GrpcStatus.INTERNAL, str(exc)) from None
    encoding = fields.get("grpc-encoding", "").strip().lower() or None
    return ResponseInfo(
        encoding=None if encoding == "identity" else encoding,
        accept_encoding=parse_accept_encoding(fields.get("grpc-accept-encoding")),
        content_type=content_type,
        metadata=metadata,
    )
