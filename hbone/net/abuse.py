"""Per-connection HTTP/2 abuse accounting (sans-IO): rapid resets, control-frame floods, read sizes for fairness.

The driver (`hbone.net.connection`) asks this object whether a peer crossed a limit and acts on the answer
(GOAWAY ENHANCE_YOUR_CALM, REFUSED_STREAM, pausing reads); trips are counted process-wide in `hbone.limits` and
logged once per connection. Rates are counted in fixed one-second windows: one comparison per event, and a burst
that straddles two windows gets at most twice the limit, which is still a bound. `log_error` bounds the driver's
own error logs the same way: at most 3 per connection, within a per-process budget.
"""

from __future__ import annotations

import logging
import time

from hbone.errors import HboneError
from hbone.limits import TripLog

# The driver's logger name, so log filters and tests keep working.
log = logging.getLogger("hbone.net.connection")

#: Read at most this much per callback from a connection whose last read was mostly small non-DATA frames, so one
#: flooding connection cannot hold the event loop for a whole 256 KiB read of 9-byte frames (~28k frames).
SMALL_READ = 16 * 1024
#: A read callback with more events than this, averaging under `_SMALL_EVENT` bytes each, marks the peer as chatty.
CHATTY_EVENTS = 256
_SMALL_EVENT = 64


class ConnectionGuard:
    """The abuse state of one connection (one small object; the log state is made on the first trip)."""

    __slots__ = (
        "_control",
        "_control_limit",
        "_control_start",
        "_peer",
        "_reset_limit",
        "_reset_start",
        "_resets",
        "_trips",
        "chatty",
    )

    def __init__(self, *, resets_per_second: int, control_per_second: int, peer: object) -> None:
        self._reset_limit, self._reset_start, self._resets = resets_per_second, 0.0, 0
        self._control_limit, self._control_start, self._control = control_per_second, 0.0, 0
        self._trips: TripLog | None = None
        self._peer = peer
        #: The last read callback was a flood of small frames: read in `SMALL_READ` pieces.
        self.chatty = False

    def premature_reset(self, now: float) -> bool:
        """The peer reset a stream we had not answered; True when that crosses the per-second limit."""
        if now - self._reset_start >= 1.0:
            self._reset_start, self._resets = now, 0
        self._resets += 1
        return self._resets > self._reset_limit

    def control_frames(self, now: float, n: int = 1) -> bool:
        """The peer sent `n` PING/SETTINGS/PRIORITY frames; True when that crosses the per-second limit."""
        if now - self._control_start >= 1.0:
            self._control_start, self._control = now, 0
        self._control += n
        return self._control > self._control_limit

    def observe_read(self, nbytes: int, nevents: int) -> None:
        """Remember whether this read was a flood of small frames (the next read is then a small one)."""
        self.chatty = nevents > CHATTY_EVENTS and nbytes < nevents * _SMALL_EVENT

    def trip(self, limit: str, detail: str = "") -> None:
        """Count a trip of `limit` (hbone.limits); the first of each limit on this connection is logged."""
        if self._trips is None:
            self._trips = TripLog(self._peer)
        self._trips.trip(limit, detail)


class _LogLimiter:
    """Per-process budget for per-connection error logs, so a flood of bad peers cannot flood stderr."""

    def __init__(self, per_window: int = 20, window: float = 10.0) -> None:
        self.per_window, self.window = per_window, window
        self.start, self.count, self.suppressed = 0.0, 0, 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.start > self.window:
            if self.suppressed:
                log.warning("suppressed %d HTTP/2 connection error logs", self.suppressed)
            self.start, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.per_window:
            self.suppressed += 1
            return False
        return True


_limiter = _LogLimiter()


def log_error(nth: int, what: str, exc: BaseException, peer: object) -> None:
    """Log the `nth` error of one connection: at most 3 per connection, within a per-process budget
    (docs/performance.md: a flood of bad peers must not flood stderr, and unread stderr blocks the process)."""
    if nth <= 3 and _limiter.allow():
        log.warning("%s (peer %s): %s", what, peer, exc, exc_info=not isinstance(exc, HboneError))
