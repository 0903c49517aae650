"""TLS running inside another byte stream: inner mTLS of POST mode and the inner tunnel of double HBONE.

The outer stream (an HTTP/2 tunnel stream) carries TLS records; `ssl.SSLObject` with memory BIOs turns them into
plaintext. Half-close follows TLS 1.3 (RFC 8446 §6.1): `write_eof()` sends close_notify, which closes only our
sending side, then ends the outer stream; a received close_notify reads as EOF.
"""

from __future__ import annotations

import ssl
from typing import Protocol

from hbone.errors import TunnelError

_READ_CHUNK = 64 * 1024


class ByteStream(Protocol):
    """What TLS needs from the carrier: the shape shared by `Stream`, `TlsStream` and TCP adapters."""

    async def read(self, n: int = -1) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...


class TlsHandshakeError(TunnelError):
    """The inner TLS handshake failed (bad certificate, carrier closed early)."""


class TlsStream:
    """A `ByteStream` of plaintext over TLS records carried by another `ByteStream`."""

    def __init__(
        self, carrier: ByteStream, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.carrier = carrier
        self.ssl_object = sslobj
        self._in = incoming
        self._out = outgoing
        self._eof_sent = False
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    async def client(cls, carrier: ByteStream, ctx: ssl.SSLContext, server_hostname: str | None = None) -> TlsStream:
        return await cls._handshake(carrier, ctx, server_side=False, server_hostname=server_hostname)

    @classmethod
    async def server(cls, carrier: ByteStream, ctx: ssl.SSLContext) -> TlsStream:
        return await cls._handshake(carrier, ctx, server_side=True, server_hostname=None)

    @classmethod
    async def _handshake(
        cls, carrier: ByteStream, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname or None)
        self = cls(carrier, sslobj, incoming, outgoing)
        while True:
            try:
                sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise TlsHandshakeError("inner TLS handshake: the carrier stream ended") from None
            except ssl.SSLError as e:
                await self._flush_quietly()
                detail = getattr(e, "verify_message", None) or e.reason or str(e)
                raise TlsHandshakeError(f"inner TLS handshake failed: {detail}") from e
        await self._flush()
        return self

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.carrier.write(data)
            await self.carrier.drain()

    async def _flush_quietly(self) -> None:
        # Deliver a fatal alert to the peer if we can; the carrier may already be gone.
        try:
            await self._flush()
        except Exception:
            pass

    async def _fill(self) -> bool:
        chunk = await self.carrier.read(_READ_CHUNK)
        if not chunk:
            self._in.write_eof()
            return False
        self._in.write(chunk)
        return True

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` plaintext bytes; b"" after the peer's close_notify or the carrier's end."""
        size = _READ_CHUNK if n < 0 else n
        if size == 0:
            return b""
        while True:
            try:
                data = self.ssl_object.read(size)
            except ssl.SSLWantReadError:
                # TLS 1.3 post-handshake messages may need an answer before more data arrives.
                await self._flush()
                if not await self._fill():
                    try:
                        data = self.ssl_object.read(size)
                    except (ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLEOFError):
                        return b""
                else:
                    continue
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLError as e:
                raise TunnelError(f"inner TLS: {e.reason or e}") from e
            self.bytes_in += len(data)
            return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise TunnelError("write after write_eof on an inner TLS stream")
        view = memoryview(data)
        while view:
            n = self.ssl_object.write(view)
            view = view[n:]
            self.bytes_out += n
        out = self._out.read()
        if out:
            self.carrier.write(out)

    async def drain(self) -> None:
        await self.carrier.drain()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        self.write(data)
        await self.drain()

    # Stream-shaped extras, delegated to the carrier, so the relay carries a TlsStream like a tunnel stream.
    def reset(self, code: int = 0x8) -> None:
        reset = getattr(self.carrier, "reset", None)
        if reset is not None:
            reset(code)

    async def wait_closed(self) -> None:
        waiter = getattr(self.carrier, "wait_closed", None)
        if waiter is not None:
            await waiter()

    @property
    def error(self) -> BaseException | None:
        return getattr(self.carrier, "error", None)

    def write_eof(self) -> None:
        """close_notify (our side only, RFC 8446 §6.1), then end the carrier's sending side."""
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # unwrap wants the peer's close_notify too; we only need ours sent
        out = self._out.read()
        if out:
            self.carrier.write(out)
        self.carrier.write_eof()
