"""Our xDS client and `microxds dump` against go-control-plane v0.14 (`gcp-ads`: LinearCache per type, SotW and
Delta ADS), a control plane we did not write.

What go-control-plane itself records is the oracle: the NACK's `error_detail` as its server received it, and the
`initial_resource_versions` our client sends when it resumes against a restarted server.
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2

from hbone.grpc.client import Channel
from microxds.client.ads import AdsClient, channel_opener
from microxds.client.state import Backoff, DeltaSession, Received, SotwSession, SotwTypeState, TypeSpec
from microxds.resources import CLUSTER, LISTENER
from tests.peers import LOOPBACK, arun_peer, loopback_env
from tests.peers.gopeers import GoControlPlane

pytestmark = pytest.mark.timeout(120)
PREFIX = "type.googleapis.com/"
ADS = {"ads": {}, "resource_api_version": "V3"}


def cluster(name: str, timeout: str = "1s") -> dict[str, Any]:
    return {"@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": timeout,
            "eds_cluster_config": {"eds_config": ADS}}  # fmt: skip


def listener(name: str, port: int) -> dict[str, Any]:
    return {"@type": LISTENER, "name": name, "address": {"socket_address": {"address": LOOPBACK, "port_value": port}}}


RESOURCES = [cluster("alpha"), cluster("beta"), listener("l1", 10001)]


class Recorder:
    """Applies resources by name; rejects a cluster whose connect_timeout is 13s (our NACK trigger)."""

    def __init__(self) -> None:
        self.names: dict[str, dict[str, str]] = {}
        self.changed = asyncio.Event()

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        rejected: dict[str, str] = {}
        held = self.names.setdefault(type_url, {})
        for r in resources:
            if type_url == CLUSTER and cluster_pb2.Cluster.FromString(r.body).connect_timeout.seconds == 13:
                rejected[r.name] = "connect_timeout 13s is refused by this test"
                continue
            held[r.name] = r.version
        for name in removed:
            held.pop(name, None)
        self.changed.set()
        return rejected


async def until(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return GoControlPlane.write_config(tmp_path / "gcp.json", RESOURCES)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_dump_lists_gcp_resources(config_file: Path, delta: bool) -> None:
    async with GoControlPlane(config_file) as gcp:
        await gcp.wait_ready()
        args = [sys.executable, "-m", "microxds.cli", "dump", "--server", gcp.xds_address, "--plaintext",
                "--type", "cds", "--json", "--node-id", "dump-test"] + (["--delta"] if delta else [])  # fmt: skip
        if delta:
            args += ["--names", "*"]
        out = await arun_peer(args, timeout=60, env=loopback_env())
        assert out.returncode == 0, out.stderr + gcp.log_tail()
        resp = json.loads(out.stdout.splitlines()[0])
        assert resp["type_url"] == CLUSTER
        assert sorted(r["name"] for r in resp["resources"]) == ["alpha", "beta"]
        assert {r["resource"]["connect_timeout"] for r in resp["resources"]} == {"1s"}
        # go-control-plane saw our node and (after the response) our ACK of its nonce.
        seen = await gcp.requests()
        assert any(s["node"] == "dump-test" and s["delta"] == delta for s in seen), seen


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_client_nack_detail_reaches_gcp(config_file: Path, delta: bool) -> None:
    """A resource our client rejects is NACKed; go-control-plane's server receives the error_detail."""
    rec = Recorder()
    node = base_pb2.Node(id="nack-test")
    session: SotwSession | DeltaSession
    if delta:
        session = DeltaSession(node, [TypeSpec(CLUSTER), TypeSpec(LISTENER)], rec)
    else:
        session = SotwSession(node, [SotwTypeState(CLUSTER), SotwTypeState(LISTENER)], rec)
    async with GoControlPlane(config_file) as gcp:
        await gcp.wait_ready()
        async with Channel(gcp.xds_address) as channel:
            ads = AdsClient(channel_opener(channel, sotw=not delta), session)
            ads.start()
            try:
                await asyncio.wait_for(ads.ready.wait(), 30)
                assert set(rec.names[CLUSTER]) == {"alpha", "beta"}
                assert set(rec.names[LISTENER]) == {"l1"}
                await gcp.put(cluster("beta", timeout="13s"))

                async def nacked() -> bool:
                    return any(s["type_url"] == CLUSTER and s.get("error_message") for s in await gcp.requests())

                await until(nacked, 30, "go-control-plane to receive the NACK")
                nack = next(s for s in await gcp.requests() if s.get("error_message"))
                assert "connect_timeout 13s is refused by this test" in nack["error_message"]
                assert "beta" in nack["error_message"]
                assert nack["error_code"] == 3  # INVALID_ARGUMENT
                assert session.types[CLUSTER].stats.nacks >= 1
                # The good resources stay applied (last-known-good), the rejected version is not taken.
                assert set(rec.names[CLUSTER]) == {"alpha", "beta"}
                # A fixed resource is accepted again: the server sees an ACK after the NACK.
                await gcp.put(cluster("beta", timeout="2s"))

                async def acked_after_nack() -> bool:
                    seen = [s for s in await gcp.requests() if s["type_url"] == CLUSTER]
                    last_nack = max(i for i, s in enumerate(seen) if s.get("error_message"))
                    return any(s.get("response_nonce") and not s.get("error_message") for s in seen[last_nack + 1 :])

                await until(acked_after_nack, 30, "an ACK after the fix")
            finally:
                await ads.stop()


async def test_delta_resume_after_gcp_restart(config_file: Path) -> None:
    """After go-control-plane restarts, our Delta client resumes with initial_resource_versions of what it holds."""
    rec = Recorder()
    session = DeltaSession(base_pb2.Node(id="resume-test"), [TypeSpec(CLUSTER), TypeSpec(LISTENER)], rec)
    first = GoControlPlane(config_file)
    first.start()
    try:
        await first.wait_ready()
        port = first.xds_port
        async with Channel(first.xds_address) as channel:
            ads = AdsClient(channel_opener(channel), session, backoff=Backoff(initial=0.05, maximum=0.2))
            ads.start()
            try:
                await asyncio.wait_for(ads.ready.wait(), 30)
                held = {name: dict(v) for name, v in rec.names.items()}
                await first.astop()
                async with GoControlPlane(config_file, xds_port=port) as second:
                    await second.wait_ready()

                    async def resumed() -> bool:
                        return any(s["delta"] and s.get("initial_resource_versions") for s in await second.requests())

                    await until(resumed, 30, "a resumed Delta stream on the restarted server")
                    seen = [s for s in await second.requests() if s.get("initial_resource_versions")]
                    by_type = {s["type_url"]: s["initial_resource_versions"] for s in seen}
                    assert by_type[CLUSTER] == held[CLUSTER]
                    assert by_type[LISTENER] == held[LISTENER]
            finally:
                await ads.stop()
    finally:
        await first.astop()
