"""microxds over real loopback gRPC: ADS, per-type services, Fetch, CSDS, config reloads; in-process server.

The client is hbone's raw gRPC `Channel` (plus grpcio for CSDS, as an independent peer). Waits are bounded polls
of observable state, never guessed sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2

from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from microxds.resources import CLUSTER, ENDPOINT, LISTENER
from microxds.server.app import ControlPlane, ServeOptions
from microxds.server.service import ADS_SERVICE

pytestmark = pytest.mark.timeout(30)
ADS_SOTW = f"/{ADS_SERVICE}/StreamAggregatedResources"
ADS_DELTA = f"/{ADS_SERVICE}/DeltaAggregatedResources"
SOTW = {"request_codec": ProtoCodec(d.DiscoveryRequest), "response_codec": ProtoCodec(d.DiscoveryResponse)}
DELTA = {"request_codec": ProtoCodec(d.DeltaDiscoveryRequest), "response_codec": ProtoCodec(d.DeltaDiscoveryResponse)}


def cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "@type": CLUSTER, "name": name, "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    } | ({"lb_policy": "ROUND_ROBIN"} if port % 2 else {})  # fmt: skip


def cla(name: str, port: int) -> dict[str, Any]:
    return {"@type": ENDPOINT, "cluster_name": name, "endpoints": [{"locality": {"zone": "z"}, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}  # fmt: skip


def write(path: Path, resources: list[dict[str, Any]], **extra: Any) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(json.dumps({"resources": resources, **extra}))
    tmp.replace(path)


async def eventually(predicate: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)  # poll interval, not synchronisation


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    config = tmp_path / "xds.json"
    write(config, [cluster("a", 1001), cla("a", 1001), cluster("b", 1002), cla("b", 1002)])
    cp = ControlPlane(ServeOptions(config=config, listen="127.0.0.1:0", poll_interval=0.02, quiet=0.01))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(0.5)


def target(cp: ControlPlane) -> str:
    host, port = cp.addresses["plaintext"]
    return f"{host}:{port}"


async def test_sotw_ads_push_ack_and_file_change(plane: ControlPlane) -> None:
    async with Channel(target(plane)) as ch, ch.stream(ADS_SOTW, **SOTW) as call:
        await call.send(d.DiscoveryRequest(node=base_pb2.Node(id="n1"), type_url=CLUSTER))
        resp = await asyncio.wait_for(call.recv(), 5)
        assert resp.type_url == CLUSTER and resp.version_info and resp.nonce
        assert len(resp.resources) == 2
        await call.send(d.DiscoveryRequest(type_url=CLUSTER, version_info=resp.version_info, response_nonce=resp.nonce))
        await call.send(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"]))
        eds = await asyncio.wait_for(call.recv(), 5)
        assert eds.type_url == ENDPOINT and len(eds.resources) == 1
        await call.send(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=["a"], response_nonce=eds.nonce))

        # Edit the file: only the changed CLA is pushed (EDS is not full-state), on the same stream.
        write(plane.options.config, [cluster("a", 1001), cla("a", 2001), cluster("b", 1002), cla("b", 1002)])
        push = await asyncio.wait_for(call.recv(), 10)
        assert push.type_url == ENDPOINT and int(push.nonce) > int(eds.nonce)
        assert [r.value for r in push.resources] != [r.value for r in eds.resources]
        [client] = plane.registry.clients()
        assert client.types[ENDPOINT].sent_count == 2 and client.types[CLUSTER].sent_count == 1


async def test_delta_ads_and_removal(plane: ControlPlane) -> None:
    async with Channel(target(plane)) as ch, ch.stream(ADS_DELTA, **DELTA) as call:
        await call.send(d.DeltaDiscoveryRequest(node=base_pb2.Node(id="n1"), type_url=CLUSTER))  # legacy wildcard
        resp = await asyncio.wait_for(call.recv(), 5)
        assert sorted(r.name for r in resp.resources) == ["a", "b"]
        assert all(r.version for r in resp.resources)
        await call.send(d.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=resp.nonce))
        write(plane.options.config, [cluster("a", 1001), cla("a", 1001)])
        push = await asyncio.wait_for(call.recv(), 10)
        assert list(push.removed_resources) == ["b"] and not push.resources


@pytest.mark.parametrize("service", ["cluster", "endpoint"])
async def test_per_type_services(plane: ControlPlane, service: str) -> None:
    kind, type_url = ("Clusters", CLUSTER) if service == "cluster" else ("Endpoints", ENDPOINT)
    base = f"/envoy.service.{service}.v3.{kind[:-1]}DiscoveryService/"
    async with Channel(target(plane)) as ch:
        async with ch.stream(base + f"Stream{kind}", **SOTW) as call:
            await call.send(d.DiscoveryRequest(node=base_pb2.Node(id="s"), resource_names=["a"]))
            resp = await asyncio.wait_for(call.recv(), 5)
            assert resp.type_url == type_url and len(resp.resources) == 1
        async with ch.stream(base + f"Delta{kind}", **DELTA) as call:
            await call.send(d.DeltaDiscoveryRequest(node=base_pb2.Node(id="s"), resource_names_subscribe=["b"]))
            delta = await asyncio.wait_for(call.recv(), 5)
            assert [r.name for r in delta.resources] == ["b"]
        fetched = await ch.unary(base + f"Fetch{kind}", d.DiscoveryRequest(node=base_pb2.Node(id="f")), **SOTW)
        assert fetched.type_url == type_url and len(fetched.resources) == 2
    assert len(plane.registry) == 0  # every stream gone, and Fetch never registered one


async def test_wrong_type_on_typed_stream_is_invalid_argument(plane: ControlPlane) -> None:
    from hbone.errors import GrpcError, GrpcStatus

    path = "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters"
    async with Channel(target(plane)) as ch, ch.stream(path, **SOTW) as call:
        await call.send(d.DiscoveryRequest(node=base_pb2.Node(id="x"), type_url=LISTENER))
        with pytest.raises(GrpcError) as err:
            await asyncio.wait_for(call.recv(), 5)
        assert err.value.status == GrpcStatus.INVALID_ARGUMENT


def grpcio_csds(addr: str, request: csds_pb2.ClientStatusRequest) -> list[csds_pb2.ClientStatusResponse]:
    with grpc.insecure_channel(addr) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        unary = stub.FetchClientStatus(request, timeout=5)
        streamed = list(stub.StreamClientStatus(iter([request, request]), timeout=5))
    return [unary, *streamed]


async def test_csds_reports_clients_acks_and_filters_by_node(plane: ControlPlane) -> None:
    async with Channel(target(plane)) as ch, ch.stream(ADS_SOTW, **SOTW) as call:
        await call.send(d.DiscoveryRequest(node=base_pb2.Node(id="edge-1"), type_url=CLUSTER))
        resp = await asyncio.wait_for(call.recv(), 5)
        await call.send(d.DiscoveryRequest(type_url=CLUSTER, version_info=resp.version_info, response_nonce=resp.nonce))
        [client] = plane.registry.clients()
        await eventually(lambda: client.types[CLUSTER].ack_count == 1)

        every = csds_pb2.ClientStatusRequest()
        answers = await asyncio.to_thread(grpcio_csds, target(plane), every)
        assert len(answers) == 3
        for answer in answers:
            [config] = answer.config
            assert config.node.id == "edge-1"
            names = {g.name: g for g in config.generic_xds_configs if g.type_url == CLUSTER}
            assert set(names) == {"a", "b"}
            assert all(g.config_status == csds_pb2.SYNCED for g in names.values())
            assert names["a"].xds_config.type_url == CLUSTER  # contents included unless excluded

        other = csds_pb2.ClientStatusRequest(
            node_matchers=[node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix="core-"))],
            exclude_resource_contents=True,
        )
        [unary, *_] = await asyncio.to_thread(grpcio_csds, target(plane), other)
        assert not unary.config


async def test_broken_and_unsupported_configs_keep_last_good(plane: ControlPlane, tmp_path: Path) -> None:
    version = plane.current.version if plane.current else ""
    plane.options.config.write_text("{ not json")
    await eventually(lambda: plane.rejects._value.get() >= 1)
    # A group with its own endpoints cannot be served from the shared linear EDS cache: rejected with the reason.
    write(plane.options.config, [cla("a", 1)], groups={"edge": {"resources": [cla("a", 9)]}})
    await eventually(lambda: plane.rejects._value.get() >= 2)
    assert plane.current is not None and plane.current.version == version


async def test_groups_without_linear_cache(tmp_path: Path) -> None:
    config = tmp_path / "xds.json"
    write(config, [cla("a", 1)], groups={"edge": {"resources": [cla("a", 9)]}})
    cp = ControlPlane(ServeOptions(config=config, listen="127.0.0.1:0", linear_types=()))
    await cp.start()
    try:
        async with Channel(target(cp)) as ch:
            for node_id, port in (("edge", 9), ("core", 1)):
                async with ch.stream(ADS_DELTA, **DELTA) as call:
                    await call.send(
                        d.DeltaDiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=ENDPOINT,
                                                resource_names_subscribe=["a"])
                    )  # fmt: skip
                    resp = await asyncio.wait_for(call.recv(), 5)
                    assert resp.resources[0].name == "a"
                    got = endpoint_pb2.ClusterLoadAssignment.FromString(resp.resources[0].resource.value)
                    assert got.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == port
    finally:
        await cp.stop(0.5)
