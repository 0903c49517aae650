"""The asyncio ADS client: one Delta stream at a time, reconnect with backoff, resume, on-demand lookups.

The protocol lives in `microxds.client.state` (sans-IO); this shell only moves messages. While disconnected the
applied state stays in force (last-known-good): nothing is cleared on a stream error, and the next stream resumes
with `initial_resource_versions`, so an unchanged control plane re-sends nothing. Streams are opened by a
`StreamOpener` — usually `channel_opener(Channel(...))` over the raw gRPC client (plaintext, TLS, mesh mTLS or
inside an HBONE tunnel), or an in-memory pipe in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from envoy.service.discovery.v3 import discovery_pb2

from hbone.errors import GrpcError, HboneError
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from microxds.client.state import Backoff, DeltaSession, SotwSession, resets_backoff

log = logging.getLogger("microxds.client")

DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SOTW_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class BidiCall(Protocol):
    async def send(self, message: Any) -> None: ...

    async def recv(self) -> Any: ...


StreamOpener = Callable[[], AbstractAsyncContextManager[BidiCall]]


def channel_opener(channel: Channel, *, sotw: bool = False) -> StreamOpener:
    """Open Delta (or SotW) ADS calls on a gRPC channel (the channel redials when its connection is gone)."""
    if sotw:
        req: ProtoCodec[Any] = ProtoCodec(discovery_pb2.DiscoveryRequest)
        resp: ProtoCodec[Any] = ProtoCodec(discovery_pb2.DiscoveryResponse)
    else:
        req, resp = ProtoCodec(discovery_pb2.DeltaDiscoveryRequest), ProtoCodec(discovery_pb2.DeltaDiscoveryResponse)
    path = SOTW_ADS if sotw else DELTA_ADS
    return lambda: channel.stream(path, request_codec=req, response_codec=resp)


class FailoverOpener:
    """Streams to one of several control-plane replicas: the current one until a stream to it fails, then another.

    Replicas serving one store hand out identical versions, so the stream that resumes on another replica (Delta
    `initial_resource_versions`, SotW `version_info`) receives nothing the client already has. `start` spreads
    clients over the replicas (e.g. a hash of the node id).
    """

    def __init__(self, openers: Sequence[StreamOpener], *, start: int = 0, targets: Sequence[str] = ()) -> None:
        if not openers:
            raise ValueError("FailoverOpener needs at least one opener")
        self.openers = list(openers)
        self.targets = list(targets) or [f"#{i}" for i in range(len(self.openers))]
        self.index = start % len(self.openers)
        self.failovers = 0
        # Which replica next is random (seeded by `start`, so one node always tries the same order): the clients of
        # a dead replica spread over the others instead of all landing on its neighbour.
        self._rng = random.Random(start)

    @classmethod
    def of_channels(cls, channels: Sequence[Channel], *, sotw: bool = False, start: int = 0) -> FailoverOpener:
        return cls([channel_opener(c, sotw=sotw) for c in channels], start=start, targets=[c.target for c in channels])

    @property
    def current(self) -> str:
        return self.targets[self.index]

    def __call__(self) -> AbstractAsyncContextManager[BidiCall]:
        return self._open()

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[BidiCall]:
        index = self.index
        try:
            async with self.openers[index]() as call:
                yield call
        except (GrpcError, HboneError, OSError):
            if len(self.openers) > 1 and self.index == index:
                self.index = self._rng.choice([i for i in range(len(self.openers)) if i != index])
                self.failovers += 1
                log.warning("xDS server %s failed; next stream goes to %s", self.targets[index], self.current)
            raise


class AdsClient:
    """Keeps a Delta (or SotW) session connected. `start()`, await `ready`, `lookup()` names on demand (Delta),
    `stop()`."""

    def __init__(
        self,
        opener: StreamOpener,
        session: DeltaSession | SotwSession,
        *,
        backoff: Backoff | None = None,
        name: str = "xds",
    ) -> None:
        self.opener = opener
        self.session = session
        self.backoff = backoff or Backoff()
        self.name = name
        self.ready = asyncio.Event()
        self.connected = asyncio.Event()
        self.connects = 0  # streams that got through their initial requests
        self.attempts = 0
        self.delays: list[float] = []  # every backoff delay slept, newest last (observability and tests)
        self.last_error: str | None = None
        self.terminations: dict[str, int] = {}  # streams ended, by reason ("clean" or the error's type)
        self._call: BidiCall | None = None
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ttl_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self.run(), name=f"ads-{self.name}")
            if isinstance(self.session, DeltaSession):
                self._ttl_task = loop.create_task(self._expire_ttls(self.session), name=f"ads-ttl-{self.name}")

    async def stop(self) -> None:
        for task in (self._task, self._ttl_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._ttl_task = None

    async def _expire_ttls(self, session: DeltaSession) -> None:
        """Drop TTL'd resources nobody heartbeats any more (every replica gone), checked after each response and
        at the earliest deadline."""
        while True:
            deadline = session.next_expiry()
            wait = None if deadline is None else max(deadline - session.clock(), 0.0)
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), wait)
            dropped = session.expire()
            if dropped:
                log.warning("%s: TTL expired without a heartbeat, dropped %s", self.name, dropped)

    def reconnect_now(self) -> None:
        """Skip the current backoff delay (e.g. the operator knows the control plane is back)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self.attempts += 1
            error: BaseException | None = None
            try:
                await self._stream_once()
            except asyncio.CancelledError:
                raise
            except (GrpcError, HboneError, OSError) as exc:
                error = exc
            finally:
                self._call = None
                self.connected.clear()
            if resets_backoff(error):
                self.backoff.reset()
            delay = self.backoff.next()
            self.last_error = None if error is None else str(error)
            reason = "clean" if error is None else type(error).__name__
            self.terminations[reason] = self.terminations.get(reason, 0) + 1
            log.log(
                logging.INFO if error is None else logging.WARNING,
                "%s: stream ended (%s); reconnecting in %.3fs",
                self.name,
                "clean end" if error is None else error,
                delay,
            )
            self.delays.append(delay)
            del self.delays[:-64]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _stream_once(self) -> None:
        async with self.opener() as call:
            for req in self.session.start():
                await call.send(req)
            self._call = call
            self.connects += 1
            self.connected.set()
            while (resp := await call.recv()) is not None:
                ack = self.session.receive(resp)
                await call.send(ack)
                if self.session.ready:
                    self.ready.set()
                self._pulse()
        # The server ended the stream with OK: a clean end (e.g. max connection age); reconnect at once.

    def _pulse(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # -- on demand ----------------------------------------------------------------------------------------------

    async def lookup(self, type_url: str, name: str, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """Subscribe to one name (`resource_names_subscribe=[name]`) and wait until it is known or known missing.

        Returns whether the resource exists. A server that never answers (no such name) times out as False.
        """
        session = self.session
        if not isinstance(session, DeltaSession):
            raise TypeError("on-demand lookups need a Delta session")
        found = session.lookup_state(type_url, name)
        if found is not None:
            return found
        req = session.subscribe(type_url, name)
        call = self._call
        if req is not None and call is not None:
            with contextlib.suppress(GrpcError, HboneError):
                await call.send(req)  # a broken stream re-subscribes on the next initial request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := session.lookup_state(type_url, name)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return found
