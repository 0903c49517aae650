"""One exception tree for the `hbone` package.

Every error carries the codes it maps to on the wire, so the edge that reports it (an HBONE response status, an
HTTP/2 RST_STREAM code, a gRPC status, a SOCKS reply) never has to guess. Foreign exceptions (ssl, OSError, h2) are
translated into this tree in one place per edge, never scattered.
"""

from __future__ import annotations

from enum import IntEnum


class H2ErrorCode(IntEnum):
    """RFC 9113 §7 error codes (kept here so sans-IO modules need not import h2)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class GrpcStatus(IntEnum):
    """The gRPC status code enum (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class HboneError(Exception):
    """Root of every error raised by `hbone`.

    `http_status` is what an HBONE server answers for it, `h2_code` what a stream reset carries, `grpc_status`
    what a gRPC call ends with.
    """

    http_status: int = 500
    h2_code: H2ErrorCode = H2ErrorCode.INTERNAL_ERROR
    grpc_status: GrpcStatus = GrpcStatus.INTERNAL


class UnsupportedDependency(HboneError, ImportError):
    """An installed HTTP/2 library (h2, hyperframe, hpack) outside the supported range (hbone.net.h2.deps)."""


# --- configuration and identity -------------------------------------------------------------------------------


class ConfigError(HboneError, ValueError):
    """Invalid configuration (file, flag or API argument)."""

    grpc_status = GrpcStatus.INVALID_ARGUMENT


class IdentityError(HboneError, ValueError):
    """A malformed SPIFFE id, certificate, key or bundle."""

    grpc_status = GrpcStatus.INVALID_ARGUMENT


class CertificateError(IdentityError):
    """A certificate bundle that cannot be used: missing files, key mismatch, expired, not yet valid."""


# --- protocol parsing (sans-IO) -------------------------------------------------------------------------------


class ProtocolError(HboneError, ValueError):
    """A peer sent bytes that violate the protocol. The message says precisely what was wrong."""

    http_status = 400
    h2_code = H2ErrorCode.PROTOCOL_ERROR
    grpc_status = GrpcStatus.INTERNAL


class LimitExceeded(ProtocolError):
    """A configured limit (frame, header list, message size, streams) was exceeded."""

    h2_code = H2ErrorCode.ENHANCE_YOUR_CALM
    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED
    http_status = 431


class BadRequest(ProtocolError):
    """An HBONE/HTTP request that is malformed (method, authority, headers)."""

    http_status = 400


# --- tunnels ------------------------------------------------------------------------------------------------


class TunnelError(HboneError):
    """A tunnel could not be opened or broke."""

    http_status = 503
    h2_code = H2ErrorCode.CONNECT_ERROR
    grpc_status = GrpcStatus.UNAVAILABLE


class ConnectRefused(TunnelError):
    """The HBONE server answered the CONNECT with a non-200 status."""

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail
        self.http_status = status
        super().__init__(f"CONNECT refused with status {status}" + (f": {detail}" if detail else ""))


class UpstreamUnreachable(TunnelError):
    """The upstream TCP connect failed or timed out (HBONE answers 503)."""


class Overloaded(TunnelError):
    """A process-wide cap (tunnels, pending dials, connections) is reached: refused, retry later (503)."""

    h2_code = H2ErrorCode.REFUSED_STREAM
    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED


class SelfCall(TunnelError):
    """A CONNECT to one of the proxy's own ports (HBONE answers 503, like ztunnel)."""


class StreamReset(TunnelError):
    """The peer reset the stream (RST_STREAM) or the connection went away under it."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"stream reset by peer (h2 error code {code})")


class ConnectionLost(TunnelError):
    """The HTTP/2 connection closed, missed its keepalive, or was told to go away."""


class PeerIdentityError(TunnelError):
    """The peer's certificate does not carry an acceptable identity (wrong trust domain or SAN)."""

    http_status = 401
    grpc_status = GrpcStatus.UNAUTHENTICATED


# --- the client side of a front end ---------------------------------------------------------------------------


class RequestTimeout(HboneError):
    """The client did not finish its request (handshake, request head) in time: 408, nothing was dialled."""

    http_status = 408
    h2_code = H2ErrorCode.CANCEL
    grpc_status = GrpcStatus.DEADLINE_EXCEEDED


class ClientClosed(HboneError):
    """The client went away before it was answered (logged as 499, nginx's "client closed request")."""

    http_status = 499
    h2_code = H2ErrorCode.CANCEL
    grpc_status = GrpcStatus.CANCELLED


# --- authorization --------------------------------------------------------------------------------------------


class Denied(HboneError):
    """Authorization denied the connection (HBONE answers 401)."""

    http_status = 401
    h2_code = H2ErrorCode.REFUSED_STREAM
    grpc_status = GrpcStatus.PERMISSION_DENIED


# --- gRPC -----------------------------------------------------------------------------------------------------


class GrpcError(HboneError):
    """A gRPC call ended with a non-OK status."""

    def __init__(self, status: GrpcStatus | int, message: str = "", details: bytes | None = None) -> None:
        self.status = GrpcStatus(status)
        self.message = message
        self.details = details
        self.grpc_status = self.status
        super().__init__(f"{self.status.name}: {message}" if message else self.status.name)
