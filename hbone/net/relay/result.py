"""What a relay reports, and the idle watch every relay runs.

ztunnel's `copy_bidirectional` returns one result per connection and the caller records it; so does ours: bytes
each way, which side ended first and what broke it. Envoy's tcp_proxy and ztunnel close a tunnel that moved no
byte either way for an idle timeout (1 hour by default); `IdleWatch` does that for both relay paths with one
timer per tunnel and no per-chunk work (it samples the byte counters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hbone.errors import H2ErrorCode, TunnelError

#: Envoy tcp_proxy's and ztunnel's default: a tunnel with no traffic either way for an hour is closed.
IDLE_TIMEOUT = 3600.0

Side = Literal["downstream", "upstream"]
DOWNSTREAM: Side = "downstream"
UPSTREAM: Side = "upstream"


class IdleTimeout(TunnelError):
    """No byte moved either way for the idle timeout: both ends are closed (the stream reset with CANCEL)."""

    h2_code = H2ErrorCode.CANCEL

    def __init__(self, timeout: float) -> None:
        super().__init__(f"idle timeout: no traffic either way for {timeout:g}s")
        self.timeout = timeout


@dataclass(slots=True)
class RelayResult:
    """One relayed connection: `sent` is downstream -> upstream, `received` upstream -> downstream (the access
    record's bytes_sent / bytes_received); `ended_first` is the side whose end (EOF or failure) came first;
    `error` is what broke the relay, None after a clean close both ways."""

    sent: int = 0
    received: int = 0
    ended_first: Side | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> str:
        """The access record's reason text: "ok", or "broken: <error>"."""
        return "ok" if self.error is None else f"broken: {self.error}"

    def ended(self, side: Side) -> None:
        if self.ended_first is None:
            self.ended_first = side


class IdleWatch:
    """Calls `on_idle` once `count()` (bytes moved, both ways) has not changed for `timeout` seconds.

    Relays with the same timeout share one timer (`_Sweeper`) that samples every `timeout / 4`, so a watch fires
    between `timeout` and about 1.25 x `timeout` after the last byte; starting and stopping one is a dict insert
    and delete (a timer of its own per tunnel cost 3-5 us of the ~500 us a tunnel costs a proxy).
    """

    __slots__ = ("_count", "_last", "_last_change", "_on_idle", "_sweeper", "timeout")

    def __init__(
        self,
        timeout: float,
        count: Callable[[], int],
        on_idle: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("idle timeout must be positive")
        self.timeout = timeout
        self._count = count
        self._on_idle = on_idle
        self._last = count()
        self._sweeper: _Sweeper | None = _Sweeper.of(loop or asyncio.get_running_loop(), timeout)
        self._last_change = self._sweeper.loop.time()
        self._sweeper.add(self)

    def _sample(self, now: float) -> bool:
        """True when idle (the watch then fired and left its sweeper)."""
        total = self._count()
        if total != self._last:
            self._last, self._last_change = total, now
            return False
        if now - self._last_change < self.timeout:
            return False
        self._sweeper = None
        self._on_idle()
        return True

    def cancel(self) -> None:
        if self._sweeper is not None:
            self._sweeper.discard(self)
            self._sweeper = None


class _Sweeper:
    """The one timer of all watches with one timeout on one loop; it exists only while it has watches."""

    _active: dict[tuple[asyncio.AbstractEventLoop, float], _Sweeper] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.watches: dict[IdleWatch, None] = {}  # an ordered set
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, timeout: float) -> _Sweeper:
        sweeper = cls._active.get((loop, timeout))
        if sweeper is None:
            sweeper = cls._active[(loop, timeout)] = cls(loop, timeout)
        return sweeper

    def add(self, watch: IdleWatch) -> None:
        self.watches[watch] = None
        if self._handle is None:
            self._handle = self.loop.call_later(self.timeout / 4, self._tick)

    def discard(self, watch: IdleWatch) -> None:
        self.watches.pop(watch, None)
        if not self.watches:
            self._stop()

    def _tick(self) -> None:
        self._handle = None
        now = self.loop.time()
        for watch in list(self.watches):
            if watch._sample(now):
                self.watches.pop(watch, None)
        if not self.watches:
            self._stop()
        elif self._handle is None:  # (an on_idle callback may have added a watch, which scheduled the tick)
            self._handle = self.loop.call_later(self.timeout / 4, self._tick)

    def _stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if _Sweeper._active.get((self.loop, self.timeout)) is self:
            del _Sweeper._active[(self.loop, self.timeout)]


def watch(
    timeout: float | None,
    count: Callable[[], int],
    on_idle: Callable[[], None],
    loop: asyncio.AbstractEventLoop | None = None,
) -> IdleWatch | None:
    """An `IdleWatch`, or None when the idle timeout is off (None or 0). Pass the `loop` when you have it: finding
    the running one makes a getpid system call (asyncio's fork check), once per tunnel here."""
    return IdleWatch(timeout, count, on_idle, loop) if timeout else None
