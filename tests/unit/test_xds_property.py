"""Property test: random cache updates and client actions keep SotW and Delta responses well formed and, at
quiescence, the client's view equals the cache for its subscriptions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microxds.cache import Snapshot, SnapshotCache
from microxds.resources import CLUSTER, ENDPOINT, content_version
from microxds.server.delta import DeltaStream
from microxds.server.sotw import SotwStream
from tests.unit.test_xds_fixtures import cla, cluster, dreq, names_of, node, req

NAMES = ["a", "b", "c", "d"]
TYPES = [CLUSTER, ENDPOINT]

update = st.tuples(
    st.just("update"),
    st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)),
    st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)),
)
subscribe = st.tuples(
    st.just("subscribe"), st.sampled_from(TYPES), st.lists(st.sampled_from([*NAMES, "*"]), max_size=3)
)
ack = st.tuples(st.just("ack"), st.sampled_from(TYPES), st.booleans())
actions = st.lists(st.one_of(update, subscribe, ack), max_size=25)


def snapshot(clusters: dict[str, int], endpoints: dict[str, int]) -> Snapshot:
    return Snapshot.of([cluster(n, lb=v % 3) for n, v in clusters.items()] + [cla(n, v) for n, v in endpoints.items()])


def expected(snap: Snapshot, type_url: str, names: set[str], wildcard: bool) -> dict[str, str]:
    return {n: r.version for n, r in snap.resources(type_url).items() if wildcard or n in names}


class SotwClient:
    def __init__(self) -> None:
        self.have: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.names: dict[str, list[str]] = {}
        self.nonce: dict[str, str] = {}
        self.version: dict[str, str] = {}
        self.last_nonce = 0

    def receive(self, resp) -> None:  # type: ignore[no-untyped-def]
        t = resp.type_url
        assert t in TYPES and resp.version_info and resp.nonce
        assert int(resp.nonce) > self.last_nonce
        self.last_nonce = int(resp.nonce)
        got = names_of(resp)
        assert len(got) == len(set(got)), "duplicate names in one response"
        assert all(a.type_url == t for a in resp.resources)
        if t == CLUSTER:  # full state: whatever is missing is deleted
            self.have[t] = {}
        for n, packed in zip(got, resp.resources, strict=True):
            self.have[t][n] = content_version(packed.value)
        self.nonce[t] = resp.nonce
        self.version[t] = resp.version_info


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_sotw_random_actions_converge(acts) -> None:  # type: ignore[no-untyped-def]
    cache = SnapshotCache(check_consistency=False)
    snap = snapshot({"a": 1}, {"a": 1})
    cache.set_snapshot("n1", snap)
    s = SotwStream(cache)
    client = SotwClient()
    subs: dict[str, list[str]] = {}

    def deliver(resps) -> None:  # type: ignore[no-untyped-def]
        for r in resps:
            client.receive(r)

    deliver(s.handle(req(CLUSTER, ["*"], with_node=node())))  # opens the stream
    subs[CLUSTER] = ["*"]
    for act in acts:
        if act[0] == "update":
            snap = snapshot(act[1], act[2])
            cache.set_snapshot("n1", snap)
            deliver(s.flush())
        elif act[0] == "subscribe":
            _, t, names = act
            subs[t] = names
            deliver(s.handle(req(t, names, nonce=client.nonce.get(t, ""), version=client.version.get(t, ""))))
        else:
            _, t, is_nack = act
            if t in client.nonce:
                deliver(s.handle(req(t, subs.get(t, []), nonce=client.nonce[t], nack="no" if is_nack else None)))
    deliver(s.flush())
    for t, names in subs.items():
        # Quiescence: a final request with the latest nonce settles anything pending.
        deliver(s.handle(req(t, names, nonce=client.nonce.get(t, ""), version=client.version.get(t, ""))))
        wildcard = "*" in names
        want = expected(snap, t, set(names), wildcard)
        if t == CLUSTER:
            assert client.have[t] == want
        else:  # no deletion signal for EDS: the client may keep stale names, but what it wants is current
            assert {n: v for n, v in client.have[t].items() if n in want} == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions, st.booleans())
def test_delta_random_actions_converge(acts, legacy) -> None:  # type: ignore[no-untyped-def]
    cache = SnapshotCache(check_consistency=False)
    snap = snapshot({"a": 1}, {"a": 1})
    cache.set_snapshot("n1", snap)
    s = DeltaStream(cache)
    have: dict[str, dict[str, str]] = {t: {} for t in TYPES}
    wanted: dict[str, set[str]] = {}
    wildcard: dict[str, bool] = {}
    nonces: list[int] = []
    last: dict[str, str] = {}

    def deliver(resps) -> None:  # type: ignore[no-untyped-def]
        for r in resps:
            assert r.type_url in TYPES and r.nonce
            nonces.append(int(r.nonce))
            got = [x.name for x in r.resources]
            assert len(got) == len(set(got)), "duplicate names in one response"
            assert not set(got) & set(r.removed_resources)
            for x in r.resources:
                assert x.version and x.resource.type_url == r.type_url
                have[r.type_url][x.name] = x.version
            for n in r.removed_resources:
                assert n in have[r.type_url], "removal of a name the client never had"
                del have[r.type_url][n]
            last[r.type_url] = r.nonce

    deliver(s.handle(dreq(CLUSTER, [] if legacy else ["*"], with_node=node())))
    wanted[CLUSTER], wildcard[CLUSTER] = set(), True
    for act in acts:
        if act[0] == "update":
            snap = snapshot(act[1], act[2])
            cache.set_snapshot("n1", snap)
            deliver(s.flush())
        elif act[0] == "subscribe":
            _, t, names = act
            old = wanted.get(t, set()) | ({"*"} if wildcard.get(t) else set())
            new = set(names)
            sub, unsub = sorted(new - old), sorted(old - new)
            wanted[t] = new - {"*"}
            first = t not in wildcard
            wildcard[t] = "*" in new or (first and not sub and not unsub)
            # The client drops what it no longer wants (xds_protocol: unsubscribe = forget locally).
            for n in list(have[t]):
                if not wildcard[t] and n not in wanted[t]:
                    del have[t][n]
            for n in unsub:
                have[t].pop(n, None)
            deliver(s.handle(dreq(t, sub, unsub, nonce=last.get(t, ""))))
        else:
            _, t, is_nack = act
            if t in last:
                deliver(s.handle(dreq(t, nonce=last[t], nack="no" if is_nack else None)))
    deliver(s.flush())
    assert nonces == sorted(nonces) and len(nonces) == len(set(nonces))
    for t, is_wildcard in wildcard.items():
        want = expected(snap, t, wanted[t], is_wildcard)
        assert have[t] == want, (t, have[t], want)
