"""When to push: debounce of config changes, push/connection throttles, and the per-stream driver.

* `Debouncer` coalesces config events (Istio: 100 ms quiet, bounded by a maximum delay; `pilot/pkg/xds/discovery.go`
  `debounce`). It sits between a config source and `set_snapshot`/`update`, so a burst becomes one cache update.
* `TokenBucket` limits new streams per second and `PushQueue`'s semaphore limits pushes in flight, so a reconnect
  storm of thousands of clients cannot starve the process (istio #35263, java-control-plane #300;
  `PILOT_PUSH_THROTTLE`, `PILOT_MAX_REQUESTS_PER_SECOND`).
* Pushes merge per connection: cache changes accumulate inside the stream handler while its push waits for a slot,
  so a client that is behind gets one push with the union of changes (Istio `pushqueue.go`).

Time is injected (`Clock`) so tests use `ManualClock` instead of wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("microxds.server")

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
ReqT_contra = TypeVar("ReqT_contra", contravariant=True)
RespT_co = TypeVar("RespT_co", covariant=True)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class LoopClock:
    """The running asyncio loop's monotonic clock and timers."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to (`advance`), running due timers in order. For tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(callback)
        heapq.heappush(self._timers, (self._now + max(delay, 0.0), next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        end = self._now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = end


class Debouncer(Generic[T]):
    """Collect events; call `fire(events)` after `quiet` seconds without a new one, or `max_delay` after the first.

    The timer is re-armed lazily (one timer per burst, not one per event), so a storm of events costs O(events).
    """

    def __init__(
        self,
        fire: Callable[[list[T]], None],
        *,
        quiet: float = 0.1,
        max_delay: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError("need 0 <= quiet <= max_delay")
        self._fire = fire
        self.quiet = quiet
        self.max_delay = max_delay
        self._clock: Clock = clock or LoopClock()
        self._events: list[T] = []
        self._first = self._last = 0.0
        self._timer: Cancellable | None = None
        self.fired = 0

    @property
    def pending(self) -> int:
        return len(self._events)

    def trigger(self, event: T) -> None:
        now = self._clock.now()
        if not self._events:
            self._first = now
        self._last = now
        self._events.append(event)
        if self._timer is None:
            self._timer = self._clock.call_later(self.quiet, self._on_timer)

    def _due(self) -> float:
        return min(self._last + self.quiet, self._first + self.max_delay)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._events:
            return
        wait = self._due() - self._clock.now()
        if wait > 1e-9:
            self._timer = self._clock.call_later(wait, self._on_timer)
            return
        self.flush()

    def flush(self) -> None:
        """Fire now with whatever is pending (e.g. on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events, self._events = self._events, []
        if events:
            self.fired += 1
            self._fire(events)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._events = []


class TokenBucket:
    """`rate` admissions per second with bursts of `burst`. `reserve()` returns how long the caller must wait.

    Reservations may drive the balance negative, so concurrent callers queue fairly instead of racing.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock: Clock = clock or LoopClock()
        self._tokens = float(burst)
        self._stamp: float | None = None

    def reserve(self) -> float:
        now = self._clock.now()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


class StreamCore(Protocol[ReqT_contra, RespT_co]):
    """What `PushQueue.serve` drives: `SotwStream` and `DeltaStream` (sans-IO request/response cores)."""

    on_dirty: Callable[[], None] | None

    def handle(self, request: ReqT_contra) -> Sequence[RespT_co]: ...

    def flush(self) -> Sequence[RespT_co]: ...

    def close(self) -> None: ...


class PushQueue:
    """Runs streams: admission (new streams/s), then requests in and pushes out, pushes capped in flight."""

    def __init__(
        self,
        *,
        max_in_flight: int = 100,
        streams_per_second: float = 100.0,
        stream_burst: int = 100,
        clock: Clock | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self.admission = TokenBucket(streams_per_second, stream_burst, clock=clock)
        self.pushes = 0  # pushes caused by cache changes
        self.responses = 0  # every response sent, request answers included

    async def _send_all(self, responses: Sequence[Resp], send: Callable[[Resp], Awaitable[None]]) -> int:
        for resp in responses:
            await send(resp)
        self.responses += len(responses)
        return len(responses)

    async def serve(
        self,
        core: StreamCore[Req, Resp],
        requests: AsyncIterable[Req],
        send: Callable[[Resp], Awaitable[None]],
    ) -> None:
        """Drive one stream until `requests` ends; always closes `core`. Send errors propagate to the caller."""
        reader = asyncio.current_task()
        pusher: _Pusher[Req, Resp] = _Pusher(self, core, send, reader)
        core.on_dirty = pusher.dirty
        try:
            await self.admission.acquire()
            try:
                async for request in requests:
                    async with pusher.lock:
                        responses = core.handle(request)
                        if responses:
                            # Answers to requests (the initial sync of a reconnect storm above all) take a push
                            # slot too, so only `max_in_flight` large responses are being encoded and buffered at
                            # once; plain ACKs, which answer nothing, never wait for one.
                            async with self._slots:
                                await self._send_all(responses, send)
                        del responses  # an idle stream must not pin its last (possibly large) response
            except asyncio.CancelledError:
                if pusher.failed is None or reader is None:
                    raise
                reader.uncancel()
            finally:
                await pusher.stop()
            if pusher.failed is not None:
                raise pusher.failed
        finally:
            core.on_dirty = None
            core.close()


class _Pusher(Generic[Req, Resp]):
    """Pushes one stream's cache changes. A task exists only while a push is pending or being sent.

    An idle xDS stream used to keep a pusher task parked on an `asyncio.Event` for its whole life: a Task, its
    coroutine frame and the Event's waiter deque, ~2 KiB per client (tools/bench/xds_memprobe.py). Now `dirty()`
    (the cache's callback) starts a task that sends until no change is left, then ends.
    """

    __slots__ = ("_closed", "_core", "_pending", "_queue", "_reader", "_send", "_task", "failed", "lock")

    def __init__(
        self,
        queue: PushQueue,
        core: StreamCore[Req, Resp],
        send: Callable[[Resp], Awaitable[None]],
        reader: asyncio.Task[Any] | None,
    ) -> None:
        self._queue = queue
        self._core = core
        self._send = send
        self._reader = reader
        self._pending = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None
        #: One writer at a time keeps responses in the order their nonces were issued.
        self.lock = asyncio.Lock()

    def dirty(self) -> None:
        self._pending = True
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._done)

    async def _run(self) -> None:
        queue = self._queue
        # Lock order is always stream lock -> push slot, and a slot holder only waits for its own sends, so
        # streams cannot deadlock each other.
        while self._pending:
            async with self.lock, queue._slots:
                self._pending = False  # changes arriving from here on are merged into the next push
                queue.pushes += await queue._send_all(self._core.flush(), self._send)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A failed push (send error) ends the stream at once, not at the next request.
            self._closed = True
            self.failed = exc
            if self._reader is not None:
                self._reader.cancel()
        elif self._pending:
            self.dirty()  # a change landed after the loop's last check, before this callback

    async def stop(self) -> None:
        self._closed = True
        task = self._task
        if task is not None:
            task.remove_done_callback(self._done)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None elsewhere (musl, macOS: nothing to do or no such call)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    return lambda: fn(0)


async def release_memory_after_bursts(queue: PushQueue, *, interval: float = 1.0) -> None:
    """Hand freed heap pages back to the OS once a burst of responses is over.

    A reconnect storm's initial syncs allocate and free megabytes of response buffers between long-lived
    per-connection objects; glibc keeps those holes in RSS for good (go-control-plane #597 shows the same
    retention in Go). When responses were sent during the last `interval` but none during this one, one
    `malloc_trim(0)` (a few ms, it only touches free chunks) returns them; idle servers never call it.
    """
    trim = _malloc_trim()
    if trim is None:
        return
    seen = queue.responses
    busy = False
    while True:
        await asyncio.sleep(interval)
        now = queue.responses
        if now != seen:
            seen, busy = now, True
        elif busy:
            busy = False
            trim()
            log.debug("returned freed heap memory to the OS after a push burst")
