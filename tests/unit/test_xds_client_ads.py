"""The asyncio ADS client against an in-memory server: backoff, resume, last-known-good, on-demand lookups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from hbone.errors import GrpcError, GrpcStatus
from microxds.client.ads import AdsClient
from microxds.client.state import DeltaSession, Received, TypeSpec
from microxds.resources import ADDRESS, AUTHORIZATION

pytestmark = pytest.mark.timeout(10)


class Store:
    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        for r in resources:
            self.items[r.name] = r.body
        for n in removed:
            self.items.pop(n, None)
        return {}


class FakeCall:
    def __init__(self) -> None:
        self.sent: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()
        self.replies: asyncio.Queue[Any] = asyncio.Queue()

    async def send(self, message: Any) -> None:
        await self.sent.put(message)

    async def recv(self) -> Any:
        item = await self.replies.get()
        if isinstance(item, BaseException):
            raise item
        return item


class FakeServer:
    """Each opener call pops the next outcome: an exception (connect failure) or a FakeCall to talk over."""

    def __init__(self) -> None:
        self.outcomes: asyncio.Queue[BaseException | FakeCall] = asyncio.Queue()
        self.opened = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[FakeCall]:
        self.opened += 1
        outcome = await self.outcomes.get()
        if isinstance(outcome, BaseException):
            raise outcome
        yield outcome


def response(type_url: str, nonce: str, **named: str) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        resources=[
            discovery_pb2.Resource(name=n, version=v, resource=any_pb2.Any(type_url=type_url, value=v.encode()))
            for n, v in named.items()
        ],
    )


def client(server: FakeServer, on_demand: bool = False) -> tuple[AdsClient, Store]:
    store = Store()
    session = DeltaSession(base_pb2.Node(id="n"), [TypeSpec(ADDRESS, on_demand), TypeSpec(AUTHORIZATION)], store)
    return AdsClient(server.open, session), store


REFUSED = GrpcError(GrpcStatus.UNAVAILABLE, "cannot connect: connection refused")


async def test_backoff_resume_and_last_known_good() -> None:
    server = FakeServer()
    ads, store = client(server)
    for _ in range(3):
        server.outcomes.put_nowait(REFUSED)
    first = FakeCall()
    server.outcomes.put_nowait(first)
    ads.start()
    try:
        reqs = [await first.sent.get() for _ in range(2)]
        assert ads.delays == [0.01, 0.02, 0.04]  # 10 ms doubling
        assert not any(r.initial_resource_versions for r in reqs)
        first.replies.put_nowait(response(ADDRESS, "1", a="v1", b="v2"))
        first.replies.put_nowait(response(AUTHORIZATION, "2", p="v3"))
        acks = [await first.sent.get() for _ in range(2)]
        assert [a.response_nonce for a in acks] == ["1", "2"]
        await asyncio.wait_for(ads.ready.wait(), 5)

        # The control plane shuts down: a reconnect at the initial delay, state kept while it is gone.
        second = FakeCall()
        first.replies.put_nowait(GrpcError(GrpcStatus.UNAVAILABLE, "server is shutting down"))
        server.outcomes.put_nowait(REFUSED)
        server.outcomes.put_nowait(second)
        resumed = [await second.sent.get() for _ in range(2)]
        assert ads.delays[-2:] == [0.01, 0.02]
        assert store.items == {"a": b"v1", "b": b"v2", "p": b"v3"}
        assert dict(resumed[0].initial_resource_versions) == {"a": "v1", "b": "v2"}
        assert dict(resumed[1].initial_resource_versions) == {"p": "v3"}
        assert ads.connects == 2 and ads.session.resources_received() == 3
    finally:
        await ads.stop()


async def test_clean_end_reconnects_at_once() -> None:
    server = FakeServer()
    ads, _ = client(server)
    first, second = FakeCall(), FakeCall()
    server.outcomes.put_nowait(first)
    server.outcomes.put_nowait(second)
    ads.start()
    try:
        await first.sent.get()
        first.replies.put_nowait(None)  # server ended the stream with OK
        await second.sent.get()
        assert ads.delays == [0.01] and ads.last_error is None
    finally:
        await ads.stop()


async def test_lookup_subscribes_one_name_on_the_live_stream() -> None:
    server = FakeServer()
    ads, store = client(server, on_demand=True)
    call = FakeCall()
    server.outcomes.put_nowait(call)
    ads.start()
    try:
        initial = [await call.sent.get() for _ in range(2)]
        assert list(initial[0].resource_names_subscribe) == ["*"] == list(initial[0].resource_names_unsubscribe)
        await asyncio.wait_for(ads.connected.wait(), 5)
        lookup = asyncio.ensure_future(ads.lookup(ADDRESS, "/10.0.0.9", timeout=5))
        sub = await call.sent.get()
        assert list(sub.resource_names_subscribe) == ["/10.0.0.9"] and not sub.response_nonce
        reply = response(ADDRESS, "7", uid9="v1")
        reply.resources[0].aliases.append("/10.0.0.9")
        call.replies.put_nowait(reply)
        assert await lookup is True
        assert store.items == {"uid9": b"v1"}
        assert await ads.lookup(ADDRESS, "uid9") is True  # already known: no request
        assert call.sent.empty() or (await call.sent.get()).response_nonce == "7"
        assert await ads.lookup(ADDRESS, "/10.0.0.99", timeout=0.05) is False  # never answered
    finally:
        await ads.stop()
