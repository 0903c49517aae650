"""`asyncio.StreamReader` / `StreamWriter`-compatible ends of one HBONE tunnel.

Code written for `asyncio.open_connection` (or a handler of `asyncio.start_server`) runs unchanged on a tunnel:
`read`, `readexactly`, `readline`, `readuntil`, `at_eof`, async iteration; `write`, `writelines`, `drain`,
`write_eof`, `close`, `wait_closed`, `get_extra_info`. The tunnel's own extras are `get_extra_info("peer_identity")`
(the verified SPIFFE id of the other end) and `"hbone_target"` (the CONNECT authority).

Reads take bytes from the tunnel only when asked (the HTTP/2 window is credited as they are consumed), so a slow
reader slows the sender instead of growing a buffer; `readuntil` is bounded by `limit` like asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hbone.errors import HboneError
from hbone.identity.spiffe import SpiffeId

#: How long `close()` waits for the peer to end its side before resetting the tunnel.
CLOSE_LINGER = 10.0
_DEFAULT_LIMIT = 2**16


class TunnelStream(Protocol):
    """The raw byte stream of one tunnel, as `Mesh.open_tunnel` returns it: `read(n)` (b"" at the peer's end),
    `write` + `drain`, `write_eof` (half-close), `reset` (abort), `wait_closed`."""

    async def read(self, n: int = -1) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def reset(self, code: int = ...) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TunnelPeer:
    """Who is on the other end of a tunnel, as verified by mTLS."""

    #: The peer's SPIFFE id from its verified certificate (None only on plaintext h2c).
    identity: SpiffeId | None
    #: The peer's socket address (for a client: the HBONE server dialled; for a server: the caller's address).
    address: tuple[str, int] | None
    #: The tunnel's target, `host:port` as sent in the CONNECT `:authority`.
    target: str
    #: Server side: the original client from the request's `forwarded: for=` (set by proxies and waypoints).
    forwarded_for: str | None = None
    #: The other end's workload metadata from `baggage` (k8s.namespace.name, k8s.deployment.name, ...), if sent.
    baggage: Mapping[str, str] = field(default_factory=dict)


class TunnelReader:
    """The reading side of a tunnel, shaped like `asyncio.StreamReader`."""

    def __init__(self, carrier: TunnelStream, *, limit: int = _DEFAULT_LIMIT) -> None:
        self._carrier = carrier
        self._limit = limit
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self, n: int) -> bool:
        chunk = await self._carrier.read(n)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (`n < 0`: everything until EOF); b"" at EOF."""
        if n == 0:
            return b""
        if n < 0:
            while not self._eof:
                await self._fill(_DEFAULT_LIMIT)
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        if not self._buffer:
            if self._eof:
                return b""
            return await self._read_through(n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def _read_through(self, n: int) -> bytes:
        chunk = await self._carrier.read(n)
        if not chunk:
            self._eof = True
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; `asyncio.IncompleteReadError` if the peer ends its side first."""
        while len(self._buffer) < n:
            if self._eof or not await self._fill(n - len(self._buffer)):
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including `separator`; `asyncio.LimitOverrunError` past `limit` bytes without it."""
        if not separator:
            raise ValueError("separator must not be empty")
        start = 0
        while True:
            idx = self._buffer.find(separator, start)
            if idx >= 0:
                end = idx + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self._buffer))
            start = max(0, len(self._buffer) - len(separator) + 1)
            if self._eof or not await self._fill(_DEFAULT_LIMIT):
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """One line including b"\\n"; at EOF the remaining bytes (possibly b"")."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial

    def at_eof(self) -> bool:
        """True once the peer ended its side and every byte was read."""
        return self._eof and not self._buffer

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class TunnelWriter:
    """The writing side of a tunnel, shaped like `asyncio.StreamWriter`. `write_eof()` half-closes (END_STREAM)."""

    def __init__(self, carrier: TunnelStream, peer: TunnelPeer, extra: dict[str, Any] | None = None) -> None:
        self._carrier = carrier
        #: The verified other end of this tunnel.
        self.peer = peer
        self._extra: dict[str, Any] = {
            "peer_identity": peer.identity,
            "peername": peer.address,
            "hbone_target": peer.target,
            **(extra or {}),
        }
        self._closing = False
        self._linger: asyncio.Task[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; pair with `drain()` so memory stays bounded by the tunnel's send buffer."""
        self._carrier.write(bytes(data))

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(data))

    async def drain(self) -> None:
        """Wait while too much is queued; raises the tunnel's error if it broke."""
        await self._carrier.drain()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Half-close: END_STREAM after the queued bytes; reading goes on."""
        self._carrier.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """`peer_identity`, `peername`, `hbone_target` (and `default` for anything else)."""
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """End our side; the tunnel is reset if the peer has not ended its side within `CLOSE_LINGER` seconds."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(HboneError):
            self._carrier.write_eof()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to wait for
            self._linger = asyncio.get_running_loop().create_task(self._close_after_linger())

    async def _close_after_linger(self) -> None:
        try:
            await asyncio.wait_for(self._carrier.wait_closed(), CLOSE_LINGER)
        except TimeoutError:
            with contextlib.suppress(HboneError):
                self._carrier.reset()

    def abort(self) -> None:
        """Reset the tunnel at once (RST_STREAM CANCEL)."""
        self._closing = True
        with contextlib.suppress(HboneError):
            self._carrier.reset()

    async def wait_closed(self) -> None:
        """Wait until the tunnel ended after `close()` (both sides, or the reset after the linger)."""
        if self._linger is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._linger)
