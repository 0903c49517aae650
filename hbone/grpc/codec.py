"""Per-call message codecs: how a method's request and response objects become message bodies and back.

The framing layer (PROTOCOL-HTTP2.md "Length-Prefixed-Message") only moves bytes; a codec turns them into
application objects. `ProtoCodec` is the usual choice (content-type ``application/grpc+proto``, or plain
``application/grpc`` which means proto). Protobuf should run on its ``upb`` backend: the pure-Python backend is
16-160x slower (docs/performance.md), so `protobuf_backend` exposes which one is loaded and
`require_fast_protobuf` lets a composition root insist on it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Generic, Protocol, TypeVar

from hbone.errors import ProtocolError

__all__ = [
    "Codec",
    "CodecError",
    "ProtoCodec",
    "RawCodec",
    "protobuf_backend",
    "require_fast_protobuf",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")


class CodecError(ProtocolError):
    """A message body that could not be parsed or an object that could not be serialised (INTERNAL)."""


class Codec(Protocol[T]):
    """Serialise one object to a message body and parse one body back."""

    def encode(self, message: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


class RawCodec:
    """Bytes in, bytes out: for proxies, benchmarks and methods whose bodies are opaque."""

    content_subtype = ""

    def encode(self, message: bytes | bytearray | memoryview) -> bytes:
        if not isinstance(message, bytes | bytearray | memoryview):
            raise CodecError(f"RawCodec sends bytes, not {type(message).__name__}")
        return bytes(message)

    def decode(self, data: bytes) -> bytes:
        return data


@functools.cache
def protobuf_backend() -> str:
    """Which protobuf implementation is loaded: "upb" (fast), "cpp", or "python" (slow). Cached."""
    from google.protobuf.internal import api_implementation

    return str(api_implementation.Type())


def require_fast_protobuf(*, strict: bool = False) -> bool:
    """True when the upb (or C++) backend is in use; otherwise warn once, or raise RuntimeError if ``strict``."""
    backend = protobuf_backend()
    if backend in ("upb", "cpp"):
        return True
    text = f"protobuf is using its {backend!r} backend, 16-160x slower than upb; install a protobuf wheel"
    if strict:
        raise RuntimeError(text)
    _warn_once(text)
    return False


@functools.cache
def _warn_once(text: str) -> None:
    log.warning("%s", text)


class ProtoCodec(Generic[M]):
    """Protobuf messages of one class (``message_class`` is a generated class such as ``helloworld_pb2.Hello``)."""

    content_subtype = "proto"

    __slots__ = ("_cls", "_name")

    def __init__(self, message_class: type[M]) -> None:
        if not hasattr(message_class, "FromString") or not hasattr(message_class, "SerializeToString"):
            raise TypeError(f"{message_class!r} is not a protobuf message class")
        self._cls = message_class
        self._name: str = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", message_class.__name__)
        require_fast_protobuf()

    @property
    def message_class(self) -> type[M]:
        return self._cls

    def encode(self, message: M) -> bytes:
        if not isinstance(message, self._cls):
            raise CodecError(f"expected {self._name}, got {type(message).__name__}")
        m: Any = message
        try:
            return bytes(m.SerializeToString())
        except Exception as exc:  # EncodeError for unset proto2 required fields, and friends
            raise CodecError(f"failed to serialize {self._name}: {exc}") from None

    def decode(self, data: bytes) -> M:
        cls: Any = self._cls
        try:
            return cls.FromString(data)  # type: ignore[no-any-return]
        except Exception as exc:  # DecodeError; upb may also raise others on hostile input
            raise CodecError(f"failed to parse {self._name}: {exc}") from None
