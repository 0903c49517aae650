"""The xDS client against a real microxds over loopback: SotW and Delta on plaintext h2c, Envoy types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2

from hbone.grpc.client import Channel
from microxds.client.ads import AdsClient, channel_opener
from microxds.client.state import DeltaSession, Received, SotwSession, SotwTypeState, TypeSpec
from microxds.resources import CLUSTER, LISTENER
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(30)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "envoy-tcp-proxy.yaml"


class Names:
    def __init__(self) -> None:
        self.by_type: dict[str, set[str]] = {}

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        names = self.by_type.setdefault(type_url, set())
        names |= {r.name for r in resources}
        names -= set(removed)
        return {}


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(ServeOptions(config=EXAMPLE, listen="127.0.0.1:0"))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0.2)


@pytest.mark.parametrize("sotw", [True, False], ids=["sotw", "delta"])
async def test_client_gets_and_acks_envoy_resources(plane: ControlPlane, sotw: bool) -> None:
    host, port = plane.addresses["plaintext"]
    names = Names()
    node = base_pb2.Node(id="test-client")
    session: SotwSession | DeltaSession
    if sotw:
        session = SotwSession(node, [SotwTypeState(CLUSTER), SotwTypeState(LISTENER)], names)
    else:
        session = DeltaSession(node, [TypeSpec(CLUSTER), TypeSpec(LISTENER)], names)
    async with Channel(f"{host}:{port}") as channel:
        ads = AdsClient(channel_opener(channel, sotw=sotw), session)
        ads.start()
        try:
            await asyncio.wait_for(ads.ready.wait(), 10)
        finally:
            await ads.stop()
    assert names.by_type == {CLUSTER: {"backend"}, LISTENER: {"tcp-10000"}}
    assert session.resources_received() == 2
    assert all(t.stats.acks >= 1 and t.stats.nacks == 0 for t in session.types.values())
