"""HBONE connection pool, as ztunnel's (docs/hbone-spec.md).

- Keyed by (source identity, destination identities, destination address): a connection carries exactly one
  source and one destination identity.
- A connection carries up to min(max_streams, the peer's SETTINGS_MAX_CONCURRENT_STREAMS) streams at once; past
  that another connection is opened for the same key.
- One dial at a time per key, so a burst of new tunnels does not become a connect storm (istio/ztunnel#931).
- Connections idle (no open streams) for `idle_timeout` are closed; connections that received GOAWAY or missed
  their keepalive are never handed out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from hbone.errors import ConnectionLost
from hbone.net.stream import Stream
from hbone.net.streamtypes import HeaderInput, StreamRefused

log = logging.getLogger("hbone.pool")

DEFAULT_MAX_STREAMS = 100
DEFAULT_IDLE_TIMEOUT = 300.0


class PooledConnection(Protocol):
    """What the pool needs from an HTTP/2 client connection."""

    @property
    def is_usable(self) -> bool: ...

    @property
    def active_streams(self) -> int: ...

    @property
    def available_streams(self) -> int: ...

    async def open_stream(self, headers: HeaderInput, *, end_stream: bool = False) -> Stream: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolKey:
    src: str  # our identity ("" for h2c)
    dst: tuple[str, ...]  # identities we accept for the server, sorted
    host: str
    port: int
    extra: str = ""  # anything else that must not be shared (e.g. POST proxy authority, source IP)


@dataclass
class _Entry:
    conn: PooledConnection
    idle_since: float = field(default_factory=time.monotonic)


Dialer = Callable[[PoolKey], Awaitable[PooledConnection]]


class ConnectionPool:
    def __init__(
        self, dial: Dialer, *, max_streams: int = DEFAULT_MAX_STREAMS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        self._dial = dial
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self._conns: dict[PoolKey, list[_Entry]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._bg: set[asyncio.Task[None]] = set()
        self.dials = 0

    def _pick(self, key: PoolKey) -> PooledConnection | None:
        entries = self._conns.get(key)
        if not entries:
            return None
        alive = [e for e in entries if e.conn.is_usable]
        if len(alive) != len(entries):
            for e in entries:
                if not e.conn.is_usable:
                    # GOAWAY'd or dead connections finish their streams on their own; just forget them.
                    self._close_later(e.conn)
            self._conns[key] = alive
        for e in alive:
            # available_streams reflects the peer's SETTINGS_MAX_CONCURRENT_STREAMS; max_streams is our own cap.
            if e.conn.available_streams > 0 and e.conn.active_streams < self.max_streams:
                e.idle_since = time.monotonic()
                return e.conn
        return None

    async def connection(self, key: PoolKey) -> PooledConnection:
        """A connection for `key` with room for one more stream, dialing one if needed."""
        if self._closed:
            raise ConnectionLost("connection pool is closed")
        conn = self._pick(key)
        if conn is not None:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._pick(key)
            if conn is not None:
                return conn
            conn = await self._dial(key)
            self.dials += 1
            self._conns.setdefault(key, []).append(_Entry(conn))
            self._arm_sweeper()
            return conn

    async def open_stream(self, key: PoolKey, headers: HeaderInput) -> Stream:
        """Open a stream on a pooled connection; a refused stream (GOAWAY race) is retried once elsewhere."""
        conn = await self.connection(key)
        try:
            return await conn.open_stream(headers)
        except (StreamRefused, ConnectionLost):
            if conn.is_usable:
                raise
            return await (await self.connection(key)).open_stream(headers)

    def stats(self) -> dict[str, int]:
        conns = [e.conn for entries in self._conns.values() for e in entries]
        return {
            "keys": len(self._conns),
            "connections": len(conns),
            "streams": sum(c.active_streams for c in conns),
            "dials": self.dials,
        }

    # --- idle release ------------------------------------------------------------------------------------------

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            period = max(0.01, self.idle_timeout / 4)
            self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key in list(self._conns):
            keep: list[_Entry] = []
            for e in self._conns[key]:
                if e.conn.active_streams > 0:
                    e.idle_since = now
                if not e.conn.is_usable or now - e.idle_since >= self.idle_timeout:
                    self._close_later(e.conn)
                else:
                    keep.append(e)
            if keep:
                self._conns[key] = keep
            else:
                del self._conns[key]
                self._locks.pop(key, None)
        if self._conns:
            self._arm_sweeper()

    def _close_later(self, conn: PooledConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._close_quietly(conn))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    @staticmethod
    async def _close_quietly(conn: PooledConnection) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = [e.conn for entries in self._conns.values() for e in entries]
        self._conns.clear()
        await asyncio.gather(*(self._close_quietly(c) for c in conns))
