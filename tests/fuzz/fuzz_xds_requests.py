"""xDS requests on one ADS stream, as the server receives them: length-prefixed protobuf bytes decoded by the
stream's codec, then handled by the SotW or Delta stream (the shared subscription module underneath), with cache
updates and pushes in between. Documented outcomes: responses, or a codec/`microxds` error that ends the stream.
Every response must serialise and parse back (it goes on the wire as is)."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from hbone.errors import HboneError
from hbone.grpc.codec import ProtoCodec
from microxds.cache import Snapshot, SnapshotCache
from microxds.errors import MicroxdsError
from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from microxds.server.delta import DeltaStream
from microxds.server.service import _Interned
from microxds.server.sotw import SotwStream
from microxds.server.status import StatusRegistry
from tests.fuzz.harness import Bytes, Harness, pack
from tests.unit.test_xds_fixtures import cla, cluster, listener, route

_TYPES = (None, CLUSTER, ENDPOINT, LISTENER)
_SOTW = ProtoCodec(discovery_pb2.DiscoveryRequest)
_DELTA = ProtoCodec(discovery_pb2.DeltaDiscoveryRequest)


def _snapshot(variant: int) -> Snapshot:
    port = 80 + (variant & 3)
    return Snapshot.of(
        [
            cluster("c1"),
            cluster("c2", service="svc"),
            cla("c1", port),
            cla("svc", aliases=("net/10.0.0.1",)),
            listener("l1"),
            route("l1-route", "c1"),
            *([cluster("c3")] if variant & 4 else []),
        ]
    )


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    delta = bool(opts & 1)
    type_url = _TYPES[(opts >> 1) & 3]
    cache = SnapshotCache(check_consistency=False)
    cache.set_snapshot("n1", _snapshot(0))
    registry = StatusRegistry()
    stream: SotwStream | DeltaStream = (DeltaStream if delta else SotwStream)(
        cache, registry=registry, peer="fuzz", type_url=type_url
    )
    codec = _DELTA if delta else _SOTW
    try:
        while b.remaining:
            op = b.byte()
            if op & 0xC0 == 0xC0:  # the config changed: push what the stream watches
                cache.set_snapshot("n1", _snapshot(op))
                responses = stream.flush()
            else:
                req = codec.decode(b.take(b.int16()))
                responses = stream.handle(_Interned(req))
            for resp in responses:
                type(resp.message()).FromString(resp.serialize())
        registry.client_status_response(lambda node: True, include_resources=True)
    finally:
        stream.close()


def _sotw(type_url: str, names: list[str], nonce: str = "", version: str = "", node: bool = False) -> bytes:
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
    )
    if node:
        req.node.id = "n1"
    return _record(req.SerializeToString())


def _delta(
    type_url: str,
    sub: list[str],
    unsub: list[str] = (),
    nonce: str = "",
    node: bool = False,  # type: ignore[assignment]
    initial: dict[str, str] | None = None,
) -> bytes:
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=sub,
        resource_names_unsubscribe=list(unsub),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if node:
        req.node.id = "n1"
    return _record(req.SerializeToString())


def _record(body: bytes) -> bytes:
    return b"\0" + len(body).to_bytes(2, "big") + body


def seeds() -> dict[str, bytes]:
    push = b"\xc5"
    nack = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce="1")
    nack.error_detail.message = "rejected"
    return {
        "sotw-cds-eds": pack(
            b"\0", _sotw(CLUSTER, [], node=True) + _sotw(ENDPOINT, ["c1", "svc"]) + push + _sotw(CLUSTER, [], nonce="1")
        ),
        "sotw-nack": pack(b"\0", _sotw(CLUSTER, ["*"], node=True) + _record(nack.SerializeToString())),
        "sotw-lds-rds": pack(b"\0", _sotw(LISTENER, [], node=True) + _sotw(ROUTE, ["l1-route"]) + push),
        "sotw-typed": pack(b"\2", _sotw(CLUSTER, ["c1"], node=True) + _sotw(ENDPOINT, ["c1"])),
        "delta-wildcard": pack(b"\1", _delta(CLUSTER, ["*"], node=True) + push + _delta(CLUSTER, [], ["*"])),
        "delta-aliases": pack(
            b"\1", _delta(ENDPOINT, ["net/10.0.0.1", "c1"], node=True) + _delta(ENDPOINT, [], ["net/10.0.0.1"])
        ),
        "delta-initial": pack(b"\1", _delta(CLUSTER, ["*"], node=True, initial={"c1": "old", "gone": "x"})),
        "delta-no-type": pack(b"\1", _delta("", ["a"])),
        "garbage": pack(b"\1", b"\0\0\x05\xff\xff\xff\xff\xff"),
    }


HARNESS = Harness("xds_requests", run, (HboneError, MicroxdsError), seeds, max_len=8192)
