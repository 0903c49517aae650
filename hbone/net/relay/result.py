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

    It samples every `timeout / 4`, so it fires between `timeout` and 1.25 x `timeout` after the last byte.
    """

    __slots__ = ("_count", "_handle", "_last", "_last_change", "_loop", "_on_idle", "_period", "timeout")

    def __init__(
        self,
        timeout: float,
        count: Callable[[], int],
        on_idle: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("idle timeout must be positive")
        self._loop = loop or asyncio.get_running_loop()
        self.timeout = timeout
        self._period = timeout / 4
        self._count = count
        self._on_idle = on_idle
        self._last = count()
        self._last_change = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._period, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        total = self._count()
        if total != self._last:
            self._last, self._last_change = total, now
        elif now - self._last_change >= self.timeout:
            self._handle = None
            self._on_idle()
            return
        self._handle = self._loop.call_later(self._period, self._tick)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def watch(timeout: float | None, count: Callable[[], int], on_idle: Callable[[], None]) -> IdleWatch | None:
    """An `IdleWatch`, or None when the idle timeout is off (None or 0)."""
    return IdleWatch(timeout, count, on_idle) if timeout else None
