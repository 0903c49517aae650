"""TTL heartbeats (xds_protocol.rst "TTL"): keep a client's TTL'd resources alive while they are current.

A resource with `ttl` is dropped by the client when the TTL passes without the server mentioning it. While a
replica is up it re-announces every TTL'd resource a client holds at its current version. Delta: a `Resource` with
the name, version and TTL but no body (a heartbeat; go-control-plane has no Delta TTL, #421). SotW: the resources
themselves, wrapped with their TTL, and for LDS/CDS the whole state, because Envoy's SotW client refreshes a TTL
only from a resource with a body and treats an LDS/CDS response as complete (a body-less heartbeat of a subset
deleted every other cluster in our Envoy test). When every replica is gone the heartbeats stop and clients drop those
resources: that is what a TTL is for (a config that must not outlive its control plane).

`Heartbeats` holds the streams that were sent a TTL'd resource (weakly: a closed stream drops out by itself) and
asks each of them for a heartbeat every `interval()` seconds; the stream sends it through its normal push path,
so it is ordered with pushes and counted (`microxds_xds_heartbeats`), never as a resource sent.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Protocol


class Beating(Protocol):
    def request_heartbeat(self) -> None: ...


def interval_for(min_ttl: float | None) -> float:
    """Heartbeat period for the shortest TTL in the config: three beats per TTL, so one lost beat is harmless."""
    if min_ttl is None:
        return 1.0  # nothing to beat for; just look again later
    return min(max(min_ttl / 3, 0.05), 60.0)


class Heartbeats:
    def __init__(self) -> None:
        self._streams: weakref.WeakSet[Beating] = weakref.WeakSet()
        self.ticks = 0

    def add(self, stream: Beating) -> None:
        self._streams.add(stream)

    def __len__(self) -> int:
        return len(self._streams)

    def tick(self) -> None:
        self.ticks += 1
        for stream in list(self._streams):
            stream.request_heartbeat()

    async def run(self, interval: Callable[[], float]) -> None:
        """Tick forever (cancel to stop); `interval()` is asked again before every sleep (the config may change)."""
        while True:
            await asyncio.sleep(interval())
            self.tick()
