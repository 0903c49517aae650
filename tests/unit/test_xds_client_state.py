"""Sans-IO xDS client state: initial requests, ACK/NACK, resume, on-demand names, SotW versions, backoff."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from hbone.errors import GrpcError, GrpcStatus
from microxds.client.state import (
    Backoff,
    DeltaSession,
    Received,
    SotwSession,
    SotwTypeState,
    TypeSpec,
    resets_backoff,
)
from microxds.resources import ADDRESS, AUTHORIZATION, CLUSTER

NODE = base_pb2.Node(id="ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local")


class Recorder:
    """A handler that rejects bodies starting with b"bad" and records everything."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, list[str], list[str]]] = []

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
        self.applied.append((type_url, [r.name for r in resources], list(removed)))
        return {r.name: "bad body" for r in resources if r.body.startswith(b"bad")}


def resource(name: str, version: str = "v1", body: bytes = b"ok", type_url: str = ADDRESS, aliases=()):
    return discovery_pb2.Resource(
        name=name, version=version, resource=any_pb2.Any(type_url=type_url, value=body), aliases=list(aliases)
    )


def response(type_url: str, nonce: str, *resources, removed=()) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, resources=list(resources), removed_resources=list(removed)
    )


def session(on_demand: bool = False) -> tuple[DeltaSession, Recorder]:
    rec = Recorder()
    return DeltaSession(NODE, [TypeSpec(ADDRESS, on_demand=on_demand), TypeSpec(AUTHORIZATION)], rec), rec


def test_initial_requests_are_wildcard_with_node_per_type() -> None:
    s, _ = session()
    reqs = s.start()
    assert [r.type_url for r in reqs] == [ADDRESS, AUTHORIZATION]
    for r in reqs:
        assert r.node.id == NODE.id  # the node goes on the first request of each type
        assert not r.resource_names_subscribe and not r.resource_names_unsubscribe  # ztunnel's wildcard form
        assert not r.initial_resource_versions and not r.response_nonce


def test_on_demand_subscribes_to_nothing_then_single_names() -> None:
    s, _ = session(on_demand=True)
    address = s.start()[0]
    assert list(address.resource_names_subscribe) == ["*"] and list(address.resource_names_unsubscribe) == ["*"]
    req = s.subscribe(ADDRESS, "/10.0.0.9")
    assert req is not None and list(req.resource_names_subscribe) == ["/10.0.0.9"] and not req.response_nonce
    assert s.subscribe(ADDRESS, "/10.0.0.9") is None  # already subscribed
    assert s.lookup_state(ADDRESS, "/10.0.0.9") is None
    s.receive(response(ADDRESS, "1", resource("uid-9", aliases=["/10.0.0.9"])))
    assert s.lookup_state(ADDRESS, "/10.0.0.9") is True
    # A reconnect re-lists the on-demand names next to "*" both ways.
    again = s.start()[0]
    assert list(again.resource_names_subscribe) == ["*", "/10.0.0.9"]


def test_removed_name_answers_a_lookup_as_missing() -> None:
    s, _ = session(on_demand=True)
    s.subscribe(ADDRESS, "/10.0.0.7")
    s.receive(response(ADDRESS, "1", removed=["/10.0.0.7"]))
    assert s.lookup_state(ADDRESS, "/10.0.0.7") is False


def test_ack_echoes_the_nonce_and_nack_lists_rejects_while_good_ones_apply() -> None:
    s, rec = session()
    ack = s.receive(response(ADDRESS, "n1", resource("a"), resource("b")))
    assert ack.response_nonce == "n1" and not ack.HasField("error_detail")
    nack = s.receive(response(ADDRESS, "n2", resource("c"), resource("d", body=b"bad!"), resource("e", body=b"bad")))
    assert nack.response_nonce == "n2"
    assert nack.error_detail.message == "d: bad body; e: bad body"
    assert rec.applied[-1] == (ADDRESS, ["c", "d", "e"], [])  # the handler saw all; it applied the good one
    state = s.types[ADDRESS]
    assert set(state.known) == {"a", "b", "c"}  # rejected names are not remembered
    assert state.stats.acks == 1 and state.stats.nacks == 1


def test_rejected_update_forgets_the_name_for_resume() -> None:
    s, _ = session()
    s.receive(response(ADDRESS, "1", resource("a", "v1")))
    s.receive(response(ADDRESS, "2", resource("a", "v2", body=b"bad")))
    assert "a" not in s.types[ADDRESS].known
    assert "a" not in s.start()[0].initial_resource_versions


def test_duplicate_names_and_wrong_types_are_rejected() -> None:
    s, _ = session()
    nack = s.receive(response(ADDRESS, "1", resource("a"), resource("a"), resource("x", type_url=CLUSTER)))
    assert "a: appears twice" in nack.error_detail.message
    assert "x: carries" in nack.error_detail.message


def test_resume_sends_initial_resource_versions_and_removals_apply() -> None:
    s, rec = session()
    s.receive(response(ADDRESS, "1", resource("a", "v1"), resource("b", "v7")))
    s.receive(response(ADDRESS, "2", removed=["b"]))
    assert rec.applied[-1] == (ADDRESS, [], ["b"])
    first = s.start()[0]
    assert dict(first.initial_resource_versions) == {"a": "v1"}
    assert first.node.id == NODE.id


def test_heartbeat_without_body_keeps_the_version() -> None:
    s, rec = session()
    s.receive(response(ADDRESS, "1", resource("a", "v1")))
    s.receive(response(ADDRESS, "2", discovery_pb2.Resource(name="a", version="v1")))
    assert rec.applied[-1] == (ADDRESS, [], [])
    assert s.types[ADDRESS].known == {"a": "v1"}


def test_unknown_type_is_acked_and_readiness_waits_for_every_type() -> None:
    s, _ = session()
    ack = s.receive(response(CLUSTER, "9"))
    assert ack.response_nonce == "9" and ack.type_url == CLUSTER and not ack.HasField("error_detail")
    assert s.unknown_responses == 1
    assert not s.ready
    s.receive(response(ADDRESS, "1"))
    assert not s.ready
    s.receive(response(AUTHORIZATION, "2"))
    assert s.ready
    assert s.resources_received() == 0


def test_on_demand_types_do_not_hold_readiness() -> None:
    s, _ = session(on_demand=True)
    s.receive(response(AUTHORIZATION, "1"))
    assert s.ready


def _cluster_any(name: str) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(cluster_pb2.Cluster(name=name))
    return out


def test_sotw_ack_carries_the_new_version_nack_the_last_good_one() -> None:
    class RejectB:
        def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]:
            return {r.name: "no b" for r in resources if r.name == "b"}

    s = SotwSession(NODE, [SotwTypeState(CLUSTER)], RejectB())
    first = s.start()[0]
    assert first.node.id == NODE.id and first.version_info == "" and not first.resource_names
    ack = s.receive(discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="1", nonce="a",
                                                   resources=[_cluster_any("x")]))  # fmt: skip
    assert (ack.version_info, ack.response_nonce) == ("1", "a") and not ack.HasField("error_detail")
    nack = s.receive(discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="2", nonce="b",
                                                    resources=[_cluster_any("x"), _cluster_any("b")]))  # fmt: skip
    assert (nack.version_info, nack.response_nonce) == ("1", "b")
    assert nack.error_detail.message == "b: no b"
    # Full-state type: a resource missing from the next response is removed.
    s.receive(discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="3", nonce="c"))
    assert s.types[CLUSTER].known == {}
    again = s.start()[0]
    assert again.version_info == "3" and again.response_nonce == ""  # nonces do not survive a reconnect


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff()
    delays = [b.next() for _ in range(13)]
    assert delays[:4] == [0.01, 0.02, 0.04, 0.08]
    assert delays[-1] == 15.0 and max(delays) == 15.0
    b.reset()
    assert b.next() == 0.01


@pytest.mark.parametrize(
    ("error", "resets"),
    [
        (None, True),
        (GrpcError(GrpcStatus.UNKNOWN, "x"), True),
        (GrpcError(GrpcStatus.CANCELLED, "x"), True),
        (GrpcError(GrpcStatus.DEADLINE_EXCEEDED, "x"), True),
        (GrpcError(GrpcStatus.UNAVAILABLE, "received prior goaway: code: NO_ERROR"), True),
        (GrpcError(GrpcStatus.UNAVAILABLE, "transport is closing"), True),
        (GrpcError(GrpcStatus.UNAVAILABLE, "server is shutting down"), True),
        (GrpcError(GrpcStatus.UNAVAILABLE, "connection refused"), False),
        (GrpcError(GrpcStatus.PERMISSION_DENIED, "no"), False),
        (OSError("boom"), False),
    ],
)
def test_which_endings_reset_the_backoff(error: BaseException | None, resets: bool) -> None:
    assert resets_backoff(error) is resets
