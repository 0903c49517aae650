"""xDS responses as the client receives them from a server (microxds or istiod): Delta responses carrying Istio
ambient Address/Authorization resources into an `AmbientHandler` and `MeshState` (the agent's path), and SotW
responses of Envoy types. Documented outcomes: an ACK or a NACK naming the rejected resources, or a codec error
that ends the stream; a server must never make the client raise anything else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from hbone.errors import HboneError
from hbone.grpc.codec import ProtoCodec
from hbone.state import MeshState
from microxds.client.ambient import AmbientHandler
from microxds.client.state import DeltaSession, Received, SotwSession, SotwTypeState, TypeSpec
from microxds.errors import MicroxdsError
from microxds.resources import ADDRESS, AUTHORIZATION, CLUSTER, LISTENER
from microxds.sources.yamlconfig import parse_texts
from tests.fuzz.harness import Bytes, Harness, pack

_DELTA = ProtoCodec(discovery_pb2.DeltaDiscoveryResponse)
_SOTW = ProtoCodec(discovery_pb2.DiscoveryResponse)
_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class _Envoy:
    """A SotW handler that accepts everything (the SotW client path is what is fuzzed, not a converter)."""

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        return {}


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack)
    node = base_pb2.Node(id="fuzz")
    handler = AmbientHandler(MeshState())
    delta = DeltaSession(node, [TypeSpec(ADDRESS), TypeSpec(AUTHORIZATION, on_demand=bool(opts & 1))], handler)
    sotw = SotwSession(node, [SotwTypeState(CLUSTER), SotwTypeState(LISTENER)], _Envoy())
    delta.start()
    sotw.start()
    while b.remaining:
        op = b.byte()
        body = b.take(b.int16())
        if op & 1:
            sotw.receive(_SOTW.decode(body))
        else:
            delta.receive(_DELTA.decode(body))
        if op & 2:
            delta.subscribe(AUTHORIZATION, body[:16].decode("utf-8", "replace"))
    delta.start()  # a reconnect: initial requests from what was kept
    _ = (delta.ready, delta.resources_received, handler.state.snapshot())


def _record(op: int, body: bytes) -> bytes:
    return bytes([op]) + len(body).to_bytes(2, "big") + body


def seeds() -> dict[str, bytes]:
    snapshot = parse_texts([("ambient.yaml", (_EXAMPLES / "ambient.yaml").read_text())])
    policy = (
        "policies:\n  - name: deny-bob\n    namespace: default\n    action: DENY\n"
        "    rules:\n      - from: [{ source: { principals: ['cluster.local/ns/default/sa/bob'] } }]\n"
    )
    snapshot_p = parse_texts([("p.yaml", policy)])
    out: dict[str, bytes] = {}
    records = b""
    for type_url, snap in ((ADDRESS, snapshot), (AUTHORIZATION, snapshot_p)):
        resources = snap.for_group().get(type_url, {})
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce="1", system_version_info="v1")
        for name, res in resources.items():
            resp.resources.add(name=name, version=res.version, resource=res.to_any())
        records += _record(0, resp.SerializeToString())
    out["ambient"] = pack(b"\0", records)
    removal = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS, nonce="2", removed_resources=["default/x"])
    out["ambient-then-removal"] = pack(b"\0", records + _record(2, removal.SerializeToString()))
    bad = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS, nonce="3")
    bad.resources.add(name="w", version="1").resource.type_url = ADDRESS
    bad.resources[0].resource.value = b"\xff\xff\xff"
    out["undecodable-address"] = pack(b"\0", _record(0, bad.SerializeToString()))
    sotw = discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="1", nonce="1")
    sotw.resources.add(type_url=CLUSTER, value=b"\x0a\x02c1")
    sotw.resources.add(type_url="type.googleapis.com/envoy.service.discovery.v3.Resource", value=b"\x1a\x02c2")
    out["sotw-clusters"] = pack(b"\1", _record(1, sotw.SerializeToString()))
    out["unknown-type"] = pack(
        b"\0", _record(0, discovery_pb2.DeltaDiscoveryResponse(type_url="x", nonce="n").SerializeToString())
    )
    return out


HARNESS = Harness("xds_responses", run, (HboneError, MicroxdsError), seeds, max_len=8192)
