"""A raw-bytes test service for gRPC tests, benchmarks and `hbone grpc call` demos: ``/hbone.test.Echo/*``.

Methods (all bodies are raw bytes):
- ``Unary``: echoes the request; echoes request metadata whose key starts with ``x-echo`` as initial and trailing
  metadata.
- ``ServerStream``: request is a 4-byte big-endian count then a payload; replies with the payload that many times.
- ``ClientStream``: replies with the concatenation of all requests.
- ``Bidi``: echoes each request as it arrives.
- ``Sleep``: never answers; records that it started and that it was cancelled (deadline, client reset).
- ``Fail``: ends with status ``request[0]`` and message ``request[1:]`` (UTF-8), details ``b"details"``.
- ``Crash``: raises a plain exception (the client must see INTERNAL "internal error", nothing else).
- ``WhoAmI``: replies with the caller's SPIFFE id (empty without mTLS).
- ``Size``: replies with a message of ``int(request)`` zero bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.codec import RawCodec

if TYPE_CHECKING:
    from hbone.grpc.server import GrpcServer, ServerCall

__all__ = ["PREFIX", "EchoService"]

PREFIX = "/hbone.test.Echo/"


class EchoService:
    """The handlers above plus what they observed, for assertions."""

    __test__ = False

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cancel_count = 0
        self.calls: list[ServerCall] = []

    def register(self, server: GrpcServer) -> None:
        raw = RawCodec()
        for name in ("Unary", "Sleep", "Fail", "Crash", "WhoAmI", "Size"):
            server.add_unary(PREFIX + name, getattr(self, name.lower()), raw, raw)
        server.add_server_stream(PREFIX + "ServerStream", self.server_stream, raw, raw)
        server.add_client_stream(PREFIX + "ClientStream", self.client_stream, raw, raw)
        server.add_bidi(PREFIX + "Bidi", self.bidi, raw, raw)

    async def unary(self, request: bytes, call: ServerCall) -> bytes:
        self.calls.append(call)
        echo = [(k, v) for k, v in call.metadata if k.startswith("x-echo")]
        if echo:
            call.set_initial_metadata(echo)
            call.set_trailing_metadata(echo)
        return request

    async def server_stream(self, request: bytes, call: ServerCall) -> AsyncIterator[bytes]:
        self.calls.append(call)
        count = int.from_bytes(request[:4], "big")
        for _ in range(count):
            yield request[4:]

    async def client_stream(self, call: ServerCall) -> bytes:
        self.calls.append(call)
        parts = []
        while (message := await call.recv()) is not None:
            parts.append(message)
        return b"".join(parts)

    async def bidi(self, call: ServerCall) -> None:
        self.calls.append(call)
        while (message := await call.recv()) is not None:
            await call.send(message)

    async def sleep(self, request: bytes, call: ServerCall) -> Any:
        self.calls.append(call)
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancel_count += 1
            self.cancelled.set()
            raise

    async def fail(self, request: bytes, call: ServerCall) -> bytes:
        raise GrpcError(GrpcStatus(request[0]), request[1:].decode(), b"details")

    async def crash(self, request: bytes, call: ServerCall) -> bytes:
        raise RuntimeError("secret internal detail /etc/passwd")

    async def whoami(self, request: bytes, call: ServerCall) -> bytes:
        return str(call.peer.identity or "").encode()

    async def size(self, request: bytes, call: ServerCall) -> bytes:
        return bytes(int(request))
