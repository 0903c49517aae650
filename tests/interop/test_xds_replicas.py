"""Replicas of `microxds serve --store etcd://...` (real etcd, real processes): Envoy with two xDS endpoints and
our agent's xDS client fail over when the replica serving them is SIGKILLed, receive ZERO resources they already
hold (asserted from the surviving replica's `microxds_xds_pushed_resources_total`), keep carrying traffic, and
converge on the next config change; a TTL'd cluster leaves Envoy once no replica heartbeats it any more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2

from hbone.grpc.client import Channel
from hbone.state import MeshState
from microxds.client.ads import AdsClient, FailoverOpener
from microxds.client.ambient import AmbientHandler
from microxds.client.state import SotwSession, SotwTypeState
from microxds.controlplane import start_ambient_ads
from microxds.etcd.client import EtcdClient
from microxds.istio.node import NodeProfile
from microxds.sources.yamlconfig import parse_texts
from microxds.store import apply
from tests.interop.test_xds_support import (
    CLUSTER_T,
    LISTENER_T,
    Microxds,
    by_prefix,
    read_tag,
    start_tag_server,
    static_cluster,
    tcp_listener,
    wait_tag,
)
from tests.peers import LOOPBACK, Envoy, Etcd, close_server, envoy_static_cluster, require_binary, require_envoy

pytestmark = pytest.mark.timeout(120)
PREFIX = "/microxds/replicas/"
PUSHED = "microxds_xds_pushed_resources_total"


@pytest.fixture
async def etcd() -> AsyncIterator[Etcd]:
    require_binary("etcd")
    async with Etcd() as peer:
        yield peer


async def store_apply(etcd: Etcd, text: str) -> int:
    """Write a config (file format) into the store in one transaction, as `microxds apply` does."""
    async with EtcdClient([f"{LOOPBACK}:{etcd.client_port}"]) as client:
        result = await apply(client, PREFIX, parse_texts([("test.yaml", text)]), prune=True)
    return result.revision


@contextlib.asynccontextmanager
async def replicas(etcd: Etcd, n: int) -> AsyncIterator[list[Microxds]]:
    url = f"etcd://{LOOPBACK}:{etcd.client_port}{PREFIX.rstrip('/')}"
    started = [Microxds(None, store=url) for _ in range(n)]
    try:
        await asyncio.gather(*(r.start_ready() for r in started))
        yield started
    finally:
        await asyncio.gather(*(r.astop() for r in started))


def sigkill(replica: Microxds) -> None:
    replica._signal(signal.SIGKILL)
    assert replica.proc is not None
    replica.proc.wait(10)


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


def two_endpoint_bootstrap(ports: list[int], api_type: str = "DELTA_GRPC") -> dict[str, Any]:
    """ADS to an xds_cluster with one endpoint per replica; a failed stream is retried (round robin: the next
    replica) after 100-500 ms instead of Envoy's default backoff."""
    xds = envoy_static_cluster("xds_cluster", ports[0], http2=True)
    endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    template = json.dumps(endpoints[0])
    endpoints[:] = [json.loads(template.replace(str(ports[0]), str(p))) for p in ports]
    return {
        "node": {"id": "envoy-ha", "cluster": "interop"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type, "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "xds_cluster",
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"}},
                }}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [xds]},
    }  # fmt: skip


def config_text(backend_port: int, *, ttl_cluster: str | None = None, ttl: str = "1s") -> str:
    resources: list[dict[str, Any]] = [static_cluster("backend", backend_port), tcp_listener("tcp_in", "backend")]
    if ttl_cluster is not None:
        resources.append({
            "@type": "type.googleapis.com/envoy.service.discovery.v3.Resource", "ttl": ttl,
            "resource": static_cluster(ttl_cluster, backend_port),
        })  # fmt: skip
    return json.dumps({"resources": resources})


async def serving(reps: list[Microxds], kind: str) -> list[Microxds]:
    return [r for r in reps if r.running and await r.metric(f'microxds_xds_clients{{protocol="{kind}"}}') >= 1]


async def test_envoy_fails_over_to_another_replica_with_nothing_resent(etcd: Etcd) -> None:
    require_envoy()
    server_a, port_a = await start_tag_server(b"A")
    server_b, port_b = await start_tag_server(b"B")
    await store_apply(etcd, config_text(port_a))
    try:
        async with replicas(etcd, 2) as reps, Envoy(two_endpoint_bootstrap([r.xds_port for r in reps])) as envoy:
            await envoy.wait_ready()
            await envoy.wait_stat("listener_manager.lds.update_success", lambda v: int(v) >= 1)
            port = await envoy.listener_port("tcp_in")
            await wait_tag(port, b"A")
            [first] = await serving(reps, "delta")
            [other] = [r for r in reps if r is not first]
            assert by_prefix(await other.metrics(), PUSHED) == 0
            versions = {await r.metric("microxds_config_reloads_total") for r in reps}
            assert versions == {1.0}  # both replicas loaded the one config

            # Traffic through Envoy runs the whole time the serving replica dies and Envoy moves.
            failures: list[str] = []
            done = asyncio.Event()

            async def traffic() -> int:
                n = 0
                while not done.is_set():
                    try:
                        got = await read_tag(port)
                    except (OSError, TimeoutError) as exc:
                        got = repr(exc).encode()
                    if got not in (b"A", b"B"):
                        failures.append(got.decode(errors="replace"))
                    n += 1
                    await asyncio.sleep(0.02)  # pacing of the probe loop
                return n

            probe = asyncio.create_task(traffic())
            sigkill(first)

            async def moved() -> bool:
                return (
                    await other.metric('microxds_xds_clients{protocol="delta"}') >= 1
                    and (await envoy.stat("control_plane.connected_state")) == 1
                )

            await wait_until(moved, "Envoy reconnected to the surviving replica")
            # Envoy ACKed its resumed types there; and was sent nothing it already had.
            cds = 'microxds_xds_pushes_total{type="type.googleapis.com/envoy.config.cluster.v3.Cluster"}'
            await other.wait_metric(cds, lambda v: v >= 1)
            assert by_prefix(await other.metrics(), PUSHED) == 0, await other.metrics()

            # A change after the failover reaches Envoy through the surviving replica: no config lost.
            cds_before = int(await envoy.stat("cluster_manager.cds.update_success") or 0)
            revision = await store_apply(etcd, config_text(port_b))
            await other.wait_metric("microxds_config_store_revision", lambda v: v == revision)
            await envoy.wait_stat("cluster_manager.cds.update_success", lambda v: int(v) > cds_before)
            await wait_tag(port, b"B")
            done.set()
            probes = await probe
            assert probes > 5 and failures == [], failures
            assert by_prefix(await other.metrics(), PUSHED) == 1  # exactly the changed cluster
    finally:
        await close_server(server_a)
        await close_server(server_b)


async def test_agent_xds_client_fails_over_with_nothing_resent(etcd: Etcd) -> None:
    ambient = """
workloads:
  - {name: alice, namespace: default, addresses: ["127.0.0.2"], serviceAccount: alice}
  - {name: bob, namespace: default, addresses: ["127.0.0.3"], serviceAccount: bob}
services:
  - {name: echo, namespace: default, addresses: ["10.96.0.10"], ports: [{port: 80, targetPort: 8080}],
     workloads: [alice]}
"""
    await store_apply(etcd, ambient)
    async with replicas(etcd, 3) as reps:
        channels = [Channel(r.target) for r in reps]
        state = MeshState()
        profile = NodeProfile(token_path=None, pod_name="agent-1")
        ads = await start_ambient_ads(channels, profile, AmbientHandler(state), ready_timeout=20)
        try:
            assert {w.name for w in state.snapshot().workloads_in_namespace("default")} == {"alice", "bob"}
            [first] = await serving(reps, "delta")
            received = ads.session.resources_received()
            sigkill(first)
            survivors = [r for r in reps if r is not first]

            async def moved() -> bool:
                return ads.connected.is_set() and bool(await serving(survivors, "delta"))

            await wait_until(moved, "the agent's xDS stream moved to another replica")
            [second] = await serving(survivors, "delta")
            await second.wait_metric('microxds_xds_pushes_total{type="type.googleapis.com/istio.workload.Address"}',
                                     lambda v: v >= 1)  # fmt: skip
            assert by_prefix(await second.metrics(), PUSHED) == 0
            assert ads.session.resources_received() == received  # the client agrees: nothing new arrived
            assert len(state.snapshot().workloads_in_namespace("default")) == 2  # state kept throughout

            # Converges on the next change through the new replica.
            await store_apply(etcd, ambient.replace("127.0.0.3", "127.0.0.4"))

            async def converged() -> bool:
                bob = [w for w in state.snapshot().workloads_in_namespace("default") if w.name == "bob"]
                return bool(bob) and str(bob[0].addresses[0]) == "127.0.0.4"

            await wait_until(converged, "the agent got the change from the surviving replica")
        finally:
            await ads.stop()
            for ch in channels:
                await ch.close()


@pytest.mark.parametrize("api_type", ["DELTA_GRPC", "GRPC"])
async def test_ttl_cluster_leaves_envoy_after_every_replica_stops(etcd: Etcd, api_type: str) -> None:
    require_envoy()
    server, port = await start_tag_server(b"A")
    await store_apply(etcd, config_text(port, ttl_cluster="ephemeral", ttl="3s"))
    try:
        bootstrap = two_endpoint_bootstrap
        async with replicas(etcd, 2) as reps, Envoy(bootstrap([r.xds_port for r in reps], api_type)) as envoy:
            await envoy.wait_ready()
            await envoy.wait_stat("cluster_manager.active_clusters", lambda v: int(v) >= 3)  # xds, backend, ephemeral

            async def clusters() -> set[str]:
                dump = await envoy.config_dump("dynamic_active_clusters")
                return {cfg["cluster"]["name"] for cfg in dump.get("configs", []) if "cluster" in cfg}

            assert await clusters() == {"backend", "ephemeral"}
            [first] = await serving(reps, "delta" if api_type == "DELTA_GRPC" else "sotw")
            heartbeats = f'microxds_xds_heartbeats_total{{type="{CLUSTER_T}"}}'
            # 5 heartbeats, one per second: at least 4 s after the first, past its 3 s TTL.
            await first.wait_metric(heartbeats, lambda v: v >= 5, timeout=15)
            assert await clusters() == {"backend", "ephemeral"}
            for r in reps:
                sigkill(r)

            async def expired() -> bool:
                return "ephemeral" not in await clusters()

            await wait_until(expired, "Envoy dropped the TTL'd cluster", timeout=20)
            assert "backend" in await clusters()  # resources without a TTL stay (last known good)
            await wait_tag(await envoy.listener_port("tcp_in"), b"A")
    finally:
        await close_server(server)


async def test_sotw_client_resumes_on_another_replica_by_version_info(etcd: Etcd) -> None:
    server, port = await start_tag_server(b"A")
    await store_apply(etcd, config_text(port))
    try:
        async with replicas(etcd, 2) as reps:
            channels = [Channel(r.target) for r in reps]
            names: dict[str, set[str]] = {}

            class Names:
                def apply(self, type_url: str, resources: Any, removed: Any) -> dict[str, str]:
                    held = names.setdefault(type_url, set())
                    held |= {r.name for r in resources}
                    held -= set(removed)
                    return {}

            types = [SotwTypeState(CLUSTER_T), SotwTypeState(LISTENER_T)]
            session = SotwSession(base_pb2.Node(id="sotw-1"), types, Names())
            opener = FailoverOpener.of_channels(channels, sotw=True)
            ads = AdsClient(opener, session)
            ads.start()
            try:
                await asyncio.wait_for(ads.ready.wait(), 20)
                assert names == {CLUSTER_T: {"backend"}, LISTENER_T: {"tcp_in"}}
                [first] = await serving(reps, "sotw")
                [other] = [r for r in reps if r is not first]
                received = session.resources_received()
                sigkill(first)

                async def moved() -> bool:
                    return ads.connected.is_set() and bool(await serving([other], "sotw"))

                await wait_until(moved, "the SotW stream moved to the other replica")
                await other.wait_metric(f'microxds_xds_resumed_total{{type="{LISTENER_T}"}}', lambda v: v >= 1)
                await other.wait_metric(f'microxds_xds_resumed_total{{type="{CLUSTER_T}"}}', lambda v: v >= 1)
                assert by_prefix(await other.metrics(), PUSHED) == 0
                assert session.resources_received() == received
                assert opener.failovers == 1
            finally:
                await ads.stop()
                for ch in channels:
                    await ch.close()
    finally:
        await close_server(server)
