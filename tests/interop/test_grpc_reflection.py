"""Server reflection on `GrpcServer` (v1 and v1alpha) read by grpcio-reflection's client; `hbone grpc call` turns
JSON into requests and responses into JSON through it; `hbone grpc health` (issue 16 §7)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool

from hbone.grpc.server import GrpcServer
from tests.interop.test_xds_support import Microxds
from tests.peers import LOOPBACK, arun_peer

reflection_db = pytest.importorskip("grpc_reflection.v1alpha.proto_reflection_descriptor_database")
reflection_pb2 = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HBONE = [sys.executable, "-m", "hbone.cli"]
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = GrpcServer()
    _, port = await app.listen(LOOPBACK, 0)
    try:
        yield port
    finally:
        await app.shutdown(1.0)


def _grpcio_client(port: int) -> tuple[list[str], list[str], list[str]]:
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        db = reflection_db.ProtoReflectionDescriptorDatabase(channel)  # speaks v1alpha
        services = list(db.get_services())
        health = DescriptorPool(db).FindServiceByName("grpc.health.v1.Health")
        # v1 is the same messages on another path: ask it with the v1alpha types.
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        answers = list(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        v1_services = [s.name for s in answers[0].list_services_response.service]
    return services, sorted(health.methods_by_name), v1_services


async def test_grpcio_reflection_client_reads_v1alpha_and_v1(server: int) -> None:
    services, methods, v1_services = await asyncio.to_thread(_grpcio_client, server)
    expected = [
        "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"
    ]  # fmt: skip
    assert services == expected
    assert v1_services == expected
    assert methods == ["Check", "Watch"]


async def test_health_command(server: int) -> None:
    proc = await arun_peer([*HBONE, "grpc", "health", f"{LOOPBACK}:{server}", "--plaintext"])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("(server): SERVING"), proc.stderr
    proc = await arun_peer([*HBONE, "grpc", "health", f"{LOOPBACK}:{server}", "--service", "nope"])
    assert proc.returncode == 1 and "NOT_FOUND" in proc.stdout, proc.stdout + proc.stderr


async def test_call_speaks_json_through_reflection(tmp_path: Path) -> None:
    """CSDS's types live only in the server process: the CLI learns them by reflection."""
    async with Microxds(EXAMPLES / "envoy-tcp-proxy.yaml") as xds:
        proc = await arun_peer([*HBONE, "grpc", "call", xds.target, CSDS, "--json", '{"node_matchers": []}'])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "< message #0: 0 bytes\n      = {}\n" in proc.stdout, proc.stdout  # no clients yet: empty, as JSON
        proc = await arun_peer([*HBONE, "grpc", "call", xds.target, CSDS, "--json", '{"no_such_field": 1}'])
        assert proc.returncode == 2 and "not a envoy.service.status.v3.ClientStatusRequest" in proc.stderr, proc.stderr
        proc = await arun_peer([*HBONE, "grpc", "call", xds.target, "/grpc.health.v1.Health/Check", "--json", "{}"])
        assert '"status": "SERVING"' in proc.stdout, proc.stdout + proc.stderr
