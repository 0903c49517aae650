"""Process-wide counts of tripped abuse limits, and the once-per-connection log line (DESIGN §5).

Every limit that bounds what a peer controls (resets per second, queued control frames, frame size, handshake
time, connections, gRPC bytes held, ...) calls `record_trip(name)` each time it trips; the admin/metrics server
exports `trip_counts()` as `hbone_limit_trips_total{limit=...}`. A connection logs each limit's first trip once
(`TripLog`), so a flood costs one log line, not one per frame.

Names are short snake_case strings; the ones in `LIMITS` are always present in `trip_counts()` (as 0 until they
trip) so dashboards see every series from the start.
"""

from __future__ import annotations

import logging
import threading
import time

from hbone.errors import Overloaded

log = logging.getLogger("hbone.limits")

# The limits this package counts; README "Security and robustness" describes each one and its default. (The TLS
# handshake timeout is enforced by the event loop itself, which reports no trip to count.)
LIMITS: tuple[str, ...] = (
    "h2_rapid_reset",  # stream resets per connection per second -> GOAWAY ENHANCE_YOUR_CALM
    "h2_pending_streams",  # streams opened but not yet answered
    "h2_control_flood",  # PING/SETTINGS/PRIORITY frames per second -> GOAWAY ENHANCE_YOUR_CALM
    "h2_outbound_buffer",  # outbound buffer over its cap (peer does not read its ACKs): reading paused
    "h2_frame_size",  # frame header announces more than SETTINGS_MAX_FRAME_SIZE
    "preface_timeout",  # HTTP/2 preface / first request bytes not received in time
    "idle_timeout",  # connection idle (no stream, no bytes) for too long
    "max_connections",  # listener's connection cap
    "max_tunnels",  # process-wide cap of open tunnels
    "max_pending_dials",  # process-wide cap of upstream dials in progress
    "self_call",  # a request addressed to one of our own listening sockets
    "grpc_buffered_bytes",  # bytes held by partly received / decompressed gRPC messages
)

_lock = threading.Lock()
_counts: dict[str, int] = dict.fromkeys(LIMITS, 0)


def record_trip(limit: str) -> None:
    """Count one trip of the named limit (e.g. "h2_rapid_reset")."""
    with _lock:
        _counts[limit] = _counts.get(limit, 0) + 1


def trip_counts() -> dict[str, int]:
    """A snapshot of every limit's trip count, for `/metrics` (`hbone_limit_trips_total{limit=...}`)."""
    with _lock:
        return dict(_counts)


class TripLog:
    """One per connection: counts every trip, logs the first trip of each limit on this connection only."""

    __slots__ = ("_peer", "_seen")

    def __init__(self, peer: object = None) -> None:
        self._peer = peer
        self._seen: set[str] | None = None  # allocated on the first trip: most connections never trip

    def trip(self, limit: str, detail: str = "") -> None:
        """Count a trip of `limit`; log it if this connection has not tripped it before."""
        record_trip(limit)
        if self._seen is None:
            self._seen = set()
        elif limit in self._seen:
            return
        self._seen.add(limit)
        log.warning("limit %s tripped (peer %s)%s", limit, self._peer or "?", f": {detail}" if detail else "")


_LOG_EVERY = 60.0  # seconds between log lines of one limit tripped outside any connection
_last_logged: dict[str, float] = {}


def trip_unattached(limit: str, peer: object = None, detail: str = "") -> None:
    """Count a trip that belongs to no connection that lives on (e.g. a refused accept); log at most once a minute."""
    record_trip(limit)
    now = time.monotonic()
    with _lock:
        last = _last_logged.get(limit)
        if last is not None and now - last < _LOG_EVERY:
            return
        _last_logged[limit] = now
    log.warning("limit %s tripped (peer %s)%s", limit, peer or "?", f": {detail}" if detail else "")


class Budget:
    """A process-wide count with a cap (open tunnels, pending upstream dials): `try_acquire()` / `release()`.

    The CLI sets `limit` from the config; every front end and the inbound handler of one process share it.
    """

    __slots__ = ("in_use", "limit", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        """Take one unit; False (and a counted trip) when the cap is reached."""
        if self.in_use >= self.limit:
            record_trip(self.name)
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


#: Tunnels open in this process (accepted or dialled), and upstream dials in progress. ztunnel has no such cap
#: (it relies on the fd limit); Envoy's overload manager caps downstream connections per process. The defaults stay
#: below the usual 65,536 fd limit with room for listeners and the control plane.
TUNNELS = Budget("max_tunnels", 16_384)
PENDING_DIALS = Budget("max_pending_dials", 1_024)


class _PendingDial:
    """`with pending_dial():` as a plain context manager: a `@contextmanager` generator cost ~14 lines of Python
    per dial (one per tunnel in `hbone serve`)."""

    __slots__ = ()

    def __enter__(self) -> None:
        if not PENDING_DIALS.try_acquire():
            raise Overloaded(f"too many upstream dials in progress (max_pending_dials {PENDING_DIALS.limit})")

    def __exit__(self, *exc: object) -> None:
        PENDING_DIALS.release()


_PENDING_DIAL = _PendingDial()


def pending_dial() -> _PendingDial:
    """Hold one of `PENDING_DIALS` around an upstream connect; raises `Overloaded` (503) when none is free."""
    return _PENDING_DIAL


class ByteBudget:
    """Bytes held against a cap, inside an optional parent's cap (a connection's budget inside the process's)."""

    __slots__ = ("limit", "name", "parent", "used")

    def __init__(self, name: str, limit: int, parent: ByteBudget | None = None) -> None:
        self.name = name
        self.limit = limit
        self.used = 0
        self.parent = parent

    def take(self, n: int) -> bool:
        """Hold `n` more bytes; False (and a counted trip) when this budget or its parent would go over."""
        parent = self.parent
        if self.used + n > self.limit or (parent is not None and parent.used + n > parent.limit):
            record_trip(self.name)
            return False
        self.used += n
        if parent is not None:
            parent.used += n
        return True

    def give(self, n: int) -> None:
        """Return `n` held bytes."""
        self.used -= n
        if self.parent is not None:
            self.parent.used -= n


_MiB = 1024 * 1024
#: Bytes held by partly received gRPC messages and by decompressed messages not yet read, in this whole process.
#: A connection may hold at most `GRPC_CONNECTION_BYTES` of it (one 64 MiB message, microxds's largest, fits).
GRPC_PROCESS_BYTES = ByteBudget("grpc_buffered_bytes", 256 * _MiB)
GRPC_CONNECTION_BYTES = 64 * _MiB


def configure(*, tunnels: int, pending_dials: int, grpc_connection_bytes: int, grpc_process_bytes: int) -> None:
    """Set this process's caps (the CLI, from its config)."""
    global GRPC_CONNECTION_BYTES
    TUNNELS.limit, PENDING_DIALS.limit = tunnels, pending_dials
    GRPC_CONNECTION_BYTES, GRPC_PROCESS_BYTES.limit = grpc_connection_bytes, grpc_process_bytes


def grpc_connection_budget(limit: int | None = None) -> ByteBudget:
    """A new per-connection gRPC byte budget inside `GRPC_PROCESS_BYTES`."""
    return ByteBudget("grpc_buffered_bytes", GRPC_CONNECTION_BYTES if limit is None else limit, GRPC_PROCESS_BYTES)
