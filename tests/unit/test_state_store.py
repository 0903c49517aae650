"""MeshState: indexes, per-item rejects, all-or-nothing apply, snapshots, change notifications, re-checks."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from hbone.authz.defaults import static_strict_policy
from hbone.authz.model import Action, Clause, Connection, Match, Policy, Rule, Scope, StringMatch
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId
from hbone.state import (
    Kind,
    MeshSnapshot,
    MeshState,
    NetworkAddress,
    Port,
    Service,
    StateChange,
    StateDelta,
    Workload,
)
from hbone.state.model import NetworkMode, TunnelProtocol

ip = ipaddress.ip_address


def wl(uid: str, addr: str, ns: str = "app", **kw: Any) -> Workload:
    return Workload(uid=uid, name=uid, namespace=ns, addresses=(ip(addr),), **kw)


def svc(host: str, vip: str, ns: str = "app", ports: tuple[Port, ...] = (Port(80, 8080),)) -> Service:
    return Service(
        name=host.split(".", maxsplit=1)[0],
        namespace=ns,
        hostname=host,
        addresses=(NetworkAddress("", ip(vip)),),
        ports=ports,
    )


HOST = "web.app.svc.cluster.local"


def test_workload_identity_uses_defaults() -> None:
    w = Workload(uid="u", name="n", namespace="app", trust_domain="", service_account="")
    assert w.identity == SpiffeId.istio("cluster.local", "app", "default")
    assert wl("u", "10.0.0.1", service_account="web").identity.principal == "cluster.local/ns/app/sa/web"


def test_indexes_by_uid_address_namespace_host_vip_and_endpoints() -> None:
    state = MeshState()
    w1 = wl("c//Pod/app/w1", "10.0.0.1", services={f"app/{HOST}": (Port(80, 8080),)})
    w2 = wl("c//Pod/other/w2", "10.0.0.2", ns="other", network="net2")
    s = svc(HOST, "10.96.0.1")
    res = state.apply(StateDelta(workloads=(w1, w2), services=(s,)))
    assert res.rejects == () and res.generation == 1
    snap = state.snapshot()
    assert snap.workload("c//Pod/app/w1") is w1
    assert snap.workload_by_address("10.0.0.1") is w1
    assert snap.workload_by_address("10.0.0.2") is None  # other network
    assert snap.workload_by_address(ip("10.0.0.2"), "net2") is w2
    assert snap.workloads_in_namespace("other") == (w2,)
    assert snap.service(f"app/{HOST}") is s
    assert snap.service_by_host(HOST) is s and snap.service_by_host(f"app/{HOST}") is s
    assert snap.service_by_vip("10.96.0.1", 80) is s
    assert snap.service_by_vip("10.96.0.1", 81) is None
    assert snap.service_by_vip("10.96.0.1") is s
    assert snap.services_in_namespace("app") == (s,)
    assert snap.endpoint_workloads(s) == (w1,)
    assert snap.services_of_workload(w1) == (s,)


def test_bare_hostname_in_several_namespaces_prefers_the_given_namespace() -> None:
    state = MeshState()
    a, b = svc("db.example.com", "10.96.0.1", ns="a"), svc("db.example.com", "10.96.0.2", ns="b")
    state.apply(StateDelta(services=(a, b)))
    snap = state.snapshot()
    assert snap.service_by_host("db.example.com", namespace="b") is b
    assert snap.service_by_host("db.example.com") is a


def test_host_network_workloads_share_an_address_standard_one_wins() -> None:
    state = MeshState()
    host = wl("h", "10.0.0.9", network_mode=NetworkMode.HOST_NETWORK)
    pod = wl("p", "10.0.0.9")
    state.apply(StateDelta(workloads=(host, pod)))
    assert state.snapshot().workload_by_address("10.0.0.9") is pod
    state.apply(StateDelta(removed_workloads=("p",)))
    assert state.snapshot().workload_by_address("10.0.0.9") is host


def test_update_moves_index_entries_and_removal_clears_them() -> None:
    state = MeshState()
    state.apply(StateDelta(workloads=(wl("u", "10.0.0.1"),), services=(svc(HOST, "10.96.0.1"),)))
    state.apply(StateDelta(workloads=(wl("u", "10.0.0.5", ns="moved"),), services=(svc(HOST, "10.96.0.7"),)))
    snap = state.snapshot()
    assert snap.workload_by_address("10.0.0.1") is None and snap.workload_by_address("10.0.0.5") is not None
    assert snap.workloads_in_namespace("app") == () and len(snap.workloads_in_namespace("moved")) == 1
    assert snap.service_by_vip("10.96.0.1") is None and snap.service_by_vip("10.96.0.7") is not None
    state.apply(StateDelta(removed_workloads=("u",), removed_services=(f"app/{HOST}",)))
    idx = state.snapshot().indexes
    assert not idx.workloads and not idx.workloads_by_address and not idx.workloads_by_namespace
    assert not idx.services and not idx.services_by_vip and not idx.services_by_host and not idx.endpoints


def test_bad_items_are_rejected_one_by_one_and_good_ones_apply() -> None:
    state = MeshState()
    delta = StateDelta(
        workloads=(
            wl("good", "10.0.0.1"),
            Workload(uid="", name="x", namespace="app"),
            wl("legacy", "10.0.0.3", tunnel_protocol=TunnelProtocol.LEGACY_ISTIO_MTLS),
            wl("bad-sa", "10.0.0.4", service_account="a b"),
            wl("good", "10.0.0.9"),  # same uid twice in one batch
        ),
        services=(svc(HOST, "10.96.0.1", ports=(Port(0, 80),)),),
        policies=(Policy("", "app"), Policy("ok", "app")),
    )
    res = state.apply(delta)
    snap = state.snapshot()
    assert set(snap.workloads) == {"good"} and snap.workload_by_address("10.0.0.1") is not None
    assert set(snap.policies) == {"app/ok"} and not snap.services
    kinds = [(r.kind, r.key) for r in res.rejects]
    assert kinds == [
        (Kind.WORKLOAD, ""),
        (Kind.WORKLOAD, "legacy"),
        (Kind.WORKLOAD, "bad-sa"),
        (Kind.WORKLOAD, "good"),
        (Kind.SERVICE, f"app/{HOST}"),
        (Kind.POLICY, "app/"),
    ]
    msg = res.nack_message
    assert "workload legacy: tunnel_protocol LEGACY_ISTIO_MTLS is not supported" in msg
    assert "workload bad-sa: no valid identity" in msg and "; " in msg
    assert f"service app/{HOST}: port service_port 0 is not a port number (1-65535)" in msg
    assert "workload good: appears twice in one update" in msg


def test_malformed_item_becomes_a_reject_not_an_exception() -> None:
    state = MeshState()
    res = state.apply(StateDelta(workloads=(wl("ok", "10.0.0.1"), "not a workload")))  # type: ignore[arg-type]
    assert len(res.rejects) == 1 and "malformed workload" in res.rejects[0].message
    assert set(state.snapshot().workloads) == {"ok"}


def test_apply_atomic_is_all_or_nothing() -> None:
    state = MeshState()
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),)))
    before = state.snapshot()
    with pytest.raises(ConfigError, match="update rejected: workload legacy: tunnel_protocol"):
        state.apply_atomic(
            StateDelta(
                workloads=(wl("b", "10.0.0.2"), wl("legacy", "10.0.0.3", tunnel_protocol=TunnelProtocol(2))),
                removed_workloads=("a",),
            )
        )
    assert state.snapshot() is before and set(before.workloads) == {"a"}
    res = state.apply_atomic(StateDelta(workloads=(wl("b", "10.0.0.2"),), removed_workloads=("a",)))
    assert res.generation == 2 and set(state.snapshot().workloads) == {"b"}


def test_snapshots_are_immutable_and_readers_keep_their_view() -> None:
    state = MeshState()
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),)))
    old = state.snapshot()
    assert state.snapshot() is old  # cheap: no copy
    state.apply(StateDelta(workloads=(wl("b", "10.0.0.2"),), removed_workloads=("a",)))
    assert set(old.workloads) == {"a"} and old.workload_by_address("10.0.0.1") is not None
    assert set(state.snapshot().workloads) == {"b"}
    with pytest.raises(TypeError):
        old.workloads["x"] = wl("x", "10.0.0.3")  # type: ignore[index]
    with pytest.raises(TypeError):
        old.workload("a").services["k"] = ()  # type: ignore[index,union-attr]


def test_notifications_carry_changed_keys_and_increasing_generation() -> None:
    state = MeshState()
    seen: list[tuple[StateChange, MeshSnapshot]] = []
    unsubscribe = state.subscribe(lambda change, snap: seen.append((change, snap)))
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"), wl("b", "10.0.0.2")), policies=(Policy("p", "app"),)))
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),)))  # identical re-send: no change, no notification
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.9"),), removed_workloads=("b", "unknown")))
    assert [c.generation for c, _ in seen] == [1, 2]
    first, second = seen[0][0], seen[1][0]
    assert first.workloads.upserted == {"a", "b"} and first.policies.upserted == {"app/p"} and not first.services
    assert second.workloads.upserted == {"a"} and second.workloads.removed == {"b"}
    assert seen[1][1] is state.snapshot()
    unsubscribe()
    state.apply(StateDelta(removed_workloads=("a",)))
    assert len(seen) == 2 and state.generation == 3


def test_a_failing_subscriber_does_not_stop_others_or_the_update(caplog: pytest.LogCaptureFixture) -> None:
    state = MeshState()
    got: list[int] = []

    def broken(change: StateChange, snap: MeshSnapshot) -> None:
        raise RuntimeError("boom")

    state.subscribe(broken)
    state.subscribe(lambda change, snap: got.append(change.generation))
    res = state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),)))
    assert res.generation == 1 and got == [1] and "subscriber" in caplog.text


def test_remove_then_upsert_in_one_batch_keeps_the_item() -> None:
    state = MeshState()
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),)))
    res = state.apply(StateDelta(workloads=(wl("a", "10.0.0.1"),), removed_workloads=("a",)))
    assert res.change is None and "a" in state.snapshot().workloads


# --- authorization through the state ----------------------------------------------------------------------------


def deny_from(ns: str, name: str = "deny", scope: Scope = Scope.NAMESPACE) -> Policy:
    rule = Rule((Clause((Match(namespaces=(StringMatch.exact(ns),)),)),))
    return Policy(name, "app", scope=scope, action=Action.DENY, rules=(rule,))


def conn_from(ns: str | None, dst: str = "10.0.0.1") -> Connection:
    ident = SpiffeId.istio("cluster.local", ns, "default") if ns else None
    return Connection(ident, ip("10.1.1.1"), ip(dst), 8080, dst_namespace="app")


def test_policies_for_workload_use_authz_selection() -> None:
    state = MeshState(root_namespace="mesh-root")
    w = wl("a", "10.0.0.1", authorization_policies=("app/sel", "mesh-root/istio_converted_static_strict"))
    g = Policy("g", "mesh-root", scope=Scope.GLOBAL)
    state.apply(
        StateDelta(
            workloads=(w,),
            policies=(
                deny_from("x", "ns"),
                deny_from("y", "sel", Scope.WORKLOAD_SELECTOR),
                deny_from("z", "unused", Scope.WORKLOAD_SELECTOR),
                g,
                static_strict_policy("mesh-root"),
            ),
        )
    )
    keys = {p.key for p in state.snapshot().policies_for_workload(w)}
    assert keys == {"mesh-root/g", "app/ns", "app/sel", "mesh-root/istio_converted_static_strict"}


def test_recheck_returns_connections_now_denied() -> None:
    state = MeshState()
    state.apply(StateDelta(workloads=(wl("a", "10.0.0.1", authorization_policies=("app/strict",)),)))
    conns = [conn_from("x"), conn_from("y"), conn_from(None), conn_from("x", dst="10.0.0.99")]
    assert state.snapshot().recheck(conns) == ()
    strict = Policy("strict", "app", scope=Scope.WORKLOAD_SELECTOR, action=Action.DENY,
                    rules=static_strict_policy().rules)  # fmt: skip
    state.apply(StateDelta(policies=(deny_from("x"), strict)))
    denied = state.snapshot().recheck(conns)
    assert [c for c, _ in denied] == [conns[0], conns[2], conns[3]]  # unknown dst: namespace policies still apply
    assert [d.policy for _, d in denied] == ["app/deny", "app/strict", "app/deny"]
    assert state.snapshot().authorize(conns[1]).allowed


def test_workloads_pickle_copy_and_asdict_with_read_only_services() -> None:
    import copy
    import dataclasses
    import pickle

    w = wl("u", "10.0.0.1", services={f"app/{HOST}": [Port(80, 8080)]})
    assert w.services[f"app/{HOST}"] == (Port(80, 8080),)  # lists normalised to tuples
    assert pickle.loads(pickle.dumps(w)) == w and copy.deepcopy(w) == w
    assert dataclasses.asdict(w)["services"][f"app/{HOST}"][0]["target_port"] == 8080
    with pytest.raises(TypeError, match="read-only"):
        w.services.pop(f"app/{HOST}")  # type: ignore[attr-defined]
