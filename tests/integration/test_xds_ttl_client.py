"""Our Delta client against a real `ControlPlane` on loopback: a TTL'd cluster stays while the server heartbeats it,
and is dropped one TTL after the server is gone; the cluster without a TTL stays."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2

from hbone.grpc.client import Channel
from microxds.client.ads import AdsClient, channel_opener
from microxds.client.state import DeltaSession, Received, TypeSpec
from microxds.resources import CLUSTER
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(30)

CONFIG = """
resources:
  - "@type": type.googleapis.com/envoy.service.discovery.v3.Resource
    ttl: 2s
    resource: {"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: short, connect_timeout: 1s}
  - {"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: forever, connect_timeout: 1s}
"""


class Names:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.changed = asyncio.Event()

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        self.names |= {r.name for r in resources}
        self.names -= set(removed)
        self.changed.set()
        return {}


async def test_ttl_resource_dropped_after_the_server_is_gone(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    plane = ControlPlane(ServeOptions(config=config, listen="127.0.0.1:0"))
    await plane.start()
    host, port = plane.addresses["plaintext"]
    names = Names()
    session = DeltaSession(base_pb2.Node(id="ttl-client"), [TypeSpec(CLUSTER)], names)
    channel = Channel(f"{host}:{port}")
    ads = AdsClient(channel_opener(channel), session)
    ads.start()
    try:
        await asyncio.wait_for(ads.ready.wait(), 10)
        assert names.names == {"short", "forever"}
        # Alive past its TTL thanks to heartbeats (three per TTL; each is a response the handler sees).
        stats = session.types[CLUSTER].stats
        first = stats.responses
        async with asyncio.timeout(10):
            while stats.responses < first + 5:
                names.changed.clear()
                await names.changed.wait()
        assert names.names == {"short", "forever"} and plane.heartbeats.ticks >= 5
        await plane.stop(grace=0.1)
        async with asyncio.timeout(10):
            while "short" in names.names:
                names.changed.clear()
                await names.changed.wait()
        assert names.names == {"forever"}
    finally:
        await ads.stop()
        await channel.close()
        await plane.stop(grace=0.1)
