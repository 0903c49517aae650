"""gRPC Length-Prefixed-Message framing (grpc/doc/PROTOCOL-HTTP2.md, "Length-Prefixed-Message").

Each message on the wire is ``Compressed-Flag (1 byte, 0 or 1) | Message-Length (uint32 big-endian) | Message``.
Messages are independent of DATA frame boundaries: one DATA frame may carry several messages, and one message may
span many frames. A Compressed-Flag of 1 means the message is compressed with the stream's ``grpc-encoding``;
compression contexts are not kept across messages (one fresh zlib stream per message).

Sans-IO: no asyncio here. Errors are `hbone.errors` types whose ``grpc_status`` is what the call ends with.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import NoReturn

from hbone.errors import GrpcStatus, LimitExceeded, ProtocolError
from hbone.limits import ByteBudget

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEADER_SIZE",
    "SUPPORTED_ENCODINGS",
    "MessageDecoder",
    "UnsupportedEncoding",
    "choose_encoding",
    "compress",
    "decompress",
    "encode_message",
    "message_prefix",
    "parse_accept_encoding",
]

HEADER_SIZE = 5
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # grpcio / grpc-go default receive limit
#: Content-codings we implement, most preferred first ("identity" means no compression).
SUPPORTED_ENCODINGS: tuple[str, ...] = ("gzip", "deflate", "identity")

_HEADER = struct.Struct(">BI")
_MAX_UINT32 = 0xFFFFFFFF
# zlib window bits: 16+15 selects the gzip wrapper (RFC 1952); 15 the zlib wrapper (RFC 1950), which is what
# grpc-core sends for "deflate".
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Compact the receive buffer once this many consumed bytes sit in front of the unread ones.
_COMPACT_AT = 64 * 1024


class UnsupportedEncoding(ProtocolError):
    """A ``grpc-encoding`` we do not implement; the spec makes the call end with UNIMPLEMENTED."""

    grpc_status = GrpcStatus.UNIMPLEMENTED


def _normalise_encoding(encoding: str | None) -> str | None:
    """Return the lower-cased coding, or None for "no compression"; raise for codings we lack."""
    if encoding is None:
        return None
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc not in _WBITS:
        raise UnsupportedEncoding(
            f"unsupported grpc-encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    return enc


def parse_accept_encoding(value: str | None) -> tuple[str, ...]:
    """Split a ``grpc-accept-encoding`` value ("gzip, identity") into lower-case codings, order kept."""
    if not value:
        return ()
    return tuple(dict.fromkeys(c.strip().lower() for c in value.split(",") if c.strip()))


def choose_encoding(preferred: Iterable[str], peer_accepts: Iterable[str]) -> str | None:
    """First of our ``preferred`` codings the peer accepts and we implement; None means send uncompressed."""
    accepted = {c.lower() for c in peer_accepts}
    for coding in preferred:
        c = coding.lower()
        if c in accepted and c in _WBITS:
            return c
    return None


def compress(payload: bytes | memoryview, encoding: str) -> bytes:
    """Compress one message body with a fresh context (contexts never span messages, per the spec)."""
    enc = _normalise_encoding(encoding)
    if enc is None:
        return bytes(payload)
    # compressobj rather than gzip.compress: no mtime in the header, so output is deterministic.
    c = zlib.compressobj(6, zlib.DEFLATED, _WBITS[enc])
    return c.compress(payload) + c.flush()


def decompress(data: bytes | memoryview, encoding: str, max_size: int) -> bytes:
    """Decompress one message, never producing more than ``max_size`` bytes (a gzip bomb stays bounded)."""
    enc = _normalise_encoding(encoding)
    if enc is None:
        return bytes(data)
    d = zlib.decompressobj(_WBITS[enc])
    try:
        # Ask for one byte more than allowed: getting it proves the message is too big without inflating the rest.
        out = d.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(f"failed to decompress {enc} message: {exc}") from None
    if len(out) > max_size:
        raise LimitExceeded(f"Received message larger than max (more than {max_size} bytes after decompression)")
    if not d.eof:
        raise ProtocolError(f"truncated {enc} message: compressed stream ended early")
    if d.unused_data:
        raise ProtocolError(f"{len(d.unused_data)} bytes of trailing data after {enc} message")
    return out


def message_prefix(length: int, compressed: bool = False) -> bytes:
    """The 5-byte prefix alone, for callers that send prefix and body as separate buffers."""
    if not 0 <= length <= _MAX_UINT32:
        raise LimitExceeded(f"message of {length} bytes does not fit the 32-bit length prefix")
    return _HEADER.pack(1 if compressed else 0, length)


def encode_message(payload: bytes | memoryview, *, compress: bool = False, encoding: str | None = None) -> bytes:
    """Frame one message. With ``compress`` and a real ``encoding`` the body is compressed and the flag set.

    ``compress`` without an encoding (or with "identity") sends the message uncompressed with flag 0: the spec
    forbids flag 1 when no Message-Encoding was declared.
    """
    enc = _normalise_encoding(encoding)
    if compress and enc is not None:
        body = _compress(payload, enc)
        return message_prefix(len(body), True) + body
    return message_prefix(len(payload), False) + payload


_compress = compress  # encode_message's keyword shadows the function name


class MessageDecoder:
    """Incremental decoder: feed DATA payloads in arrival order, get back whole message bodies.

    ``encoding`` is the stream's ``grpc-encoding`` (None or "identity" for none). ``max_message_size`` bounds both
    the wire length and the decompressed length. After an error the decoder is poisoned: every later call raises
    the same error, since the stream's framing can no longer be trusted.

    With a `budget` (the connection's, inside the process's: `hbone.limits`), the bytes of a partly received
    message and of returned messages not yet `consumed()` are held against it; past it the call fails with
    RESOURCE_EXHAUSTED and only this decoder's call is affected. `release()` (or dropping the decoder) returns them.
    """

    __slots__ = ("_budget", "_buf", "_encoding", "_error", "_held", "_max", "_out", "_pos")

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        encoding: str | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        self._budget = budget
        self._held = 0  # partial-message bytes charged to the budget
        self._out = 0  # returned message bytes charged until consumed()
        self._max = max_message_size
        self._encoding = _normalise_encoding(encoding)
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already consumed
        self._error: ProtocolError | None = None

    @property
    def encoding(self) -> str | None:
        return self._encoding

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet returned as a message (a partial prefix or body)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add one chunk; return every message it completes (possibly none)."""
        if self._error is not None:
            raise self._error
        if not data:
            return []
        if self._pos == len(self._buf):
            # Nothing pending: parse straight from the caller's chunk and keep only its tail.
            self._buf.clear()
            self._pos = 0
            with memoryview(data) as raw, raw.cast("B") as view:
                msgs, used = self._parse(view)
                if used < len(view):
                    self._buf += view[used:]
            if self._budget is not None:
                self._charge()
            return msgs
        self._buf += data
        if self._held:  # charged again by _charge() below; meanwhile the completed messages take its place
            assert self._budget is not None
            self._budget.give(self._held)
            self._held = 0
        with memoryview(self._buf) as view:
            msgs, used = self._parse(view[self._pos :])
        self._pos += used
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._pos = 0
        if self._budget is not None:
            self._charge()
        return msgs

    def consumed(self, n: int) -> None:
        """The application took `n` bytes of returned messages: no longer held against the budget."""
        if self._budget is not None and n:
            n = min(n, self._out)
            self._out -= n
            self._budget.give(n)

    def release(self) -> None:
        """Return everything held to the budget (the call ended); idempotent."""
        budget = self._budget
        if budget is not None and (self._held or self._out):
            budget.give(self._held + self._out)
            self._held = self._out = 0

    def __del__(self) -> None:
        self.release()  # a call dropped without release() must not leak its budget

    def _charge(self) -> None:
        budget = self._budget
        assert budget is not None
        held = len(self._buf) - self._pos
        delta = held - self._held
        if delta > 0 and not budget.take(delta):
            self._over(f"{held} bytes of a partly received message")
        elif delta < 0:
            budget.give(-delta)
        self._held = held

    def _over(self, what: str) -> NoReturn:
        self._buf = bytearray()
        self._pos = 0
        self.release()
        budget = self._budget
        assert budget is not None
        self._fail(LimitExceeded(f"{what} would exceed the cap on buffered gRPC bytes ({budget.limit} per connection)"))

    def close(self) -> None:
        """End of stream: a partial message left over means the peer truncated it."""
        if self._error is not None:
            raise self._error
        if self.pending_bytes:
            self._fail(ProtocolError(f"stream ended inside a message ({self.pending_bytes} bytes of it received)"))

    def _fail(self, err: ProtocolError) -> NoReturn:
        self._error = err
        if self._budget is not None:
            self._buf = bytearray()
            self._pos = 0
            self.release()
        raise err

    def _parse(self, view: memoryview) -> tuple[list[bytes], int]:
        msgs: list[bytes] = []
        pos = 0
        end = len(view)
        while end - pos >= HEADER_SIZE:
            flag, length = _HEADER.unpack_from(view, pos)
            if flag > 1:
                self._fail(ProtocolError(f"invalid compressed flag {flag} in gRPC message prefix"))
            if length > self._max:
                self._fail(LimitExceeded(f"Received message larger than max ({length} vs. {self._max})"))
            if end - pos - HEADER_SIZE < length:
                break
            body = view[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
            if flag:
                if self._encoding is None:
                    self._fail(ProtocolError("compressed message received but no grpc-encoding was negotiated"))
                try:
                    msg = decompress(body, self._encoding, self._max)
                except ProtocolError as err:
                    self._fail(err)
            else:
                msg = body.tobytes()
            if self._budget is not None:
                # Returned messages count until the reader consumes them: one read of small gzip messages can
                # inflate to many times its size (a gzip bomb per message, each just under the limit).
                if not self._budget.take(len(msg)):
                    self._over(f"{self._out + len(msg)} bytes of received messages")
                self._out += len(msg)
            msgs.append(msg)
            pos += HEADER_SIZE + length
        return msgs, pos
