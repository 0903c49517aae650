"""End to end on loopback: microxds (dev CA + YAML) and two agents that configure themselves over Delta xDS.

alice's agent forwards a port to bob's service; bob's agent enforces the policies it gets from microxds. The
harness is `tools/localmesh.LocalMesh` (the README demo runs the same code).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2

from hbone.errors import ConnectRefused, HboneError
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from hbone.identity import FileSource, IdentityManager
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord
from hbone.tls import MeshTls
from microxds.resources import AUTHORIZATION
from tools.localmesh import DENY_ALICE, ISTIOD_ID, LocalMesh

pytestmark = pytest.mark.timeout(60)

BROKEN_POLICY = """
resources:
  - "@type": type.googleapis.com/istio.security.Authorization
    name: broken
    namespace: default
    action: DENY
    rules: [{ clauses: [{ matches: [{ principals: [{}] }] }] }]
"""


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Poll a condition that has no event to wait on (state held by another component)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


class Closed:
    """An access sink that hands each finished record to `on_close`."""

    def __init__(self, on_close: Callable[[AccessRecord], None]) -> None:
        self.on_close = on_close

    def opened(self, record: AccessRecord) -> None:
        pass

    def closed(self, record: AccessRecord) -> None:
        self.on_close(record)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[LocalMesh]:
    async with LocalMesh(tmp_path) as m:
        yield m


async def open_tunnel(mesh: LocalMesh) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(mesh.ip("alice"), mesh.forward_port())


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 5)


async def test_certificates_come_from_the_control_plane_ca(mesh: LocalMesh) -> None:
    for name in ("alice", "bob"):
        lw = mesh.agents[name].local(f"default/{name}")
        assert str(lw.identity.identity) == f"spiffe://cluster.local/ns/default/sa/{name}"
        assert lw.identity.current.roots[0] == mesh.ca.cert
    assert sum(s.issued for s in mesh.ca_services) == 2


async def test_alice_to_bob_then_policy_denies_and_allows_again(mesh: LocalMesh) -> None:
    assert await mesh.round_trip(b"hello") == b"hello"
    bob = mesh.agents["bob"]
    bob_inbound = bob.local("default/bob").inbound
    reader, writer = await open_tunnel(mesh)
    assert await echo(reader, writer, b"open before the policy") == b"open before the policy"
    await wait_until(lambda: len(bob_inbound.open) == 1)

    started = time.monotonic()
    mesh.write_config(DENY_ALICE)
    await wait_until(lambda: "default/deny-alice" in bob.state.snapshot().policies, timeout=2.0)
    assert time.monotonic() - started < 2.0
    # The open tunnel is closed by bob's agent (late rejection) ...
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert bob_inbound.late_rejections == 1
    writer.close()
    # ... and a new one is refused with 401.
    with pytest.raises(ConnectRefused) as refused:
        await mesh.agents["alice"].open("default/alice", "bob.default.svc.cluster.local:80")
    assert refused.value.status == 401
    outbound: list[AccessRecord] = []
    remove = accesslog.add_sink(Closed(lambda r: outbound.append(r) if r.direction == "outbound" else None))
    try:
        assert await mesh.round_trip(b"denied") == b""
        await wait_until(lambda: any(r.status == 401 for r in outbound))
    finally:
        remove()
    # alice's agent records the tunnel it originated, once, with bob's answer (a DENY in its metrics).
    [rec] = [r for r in outbound if r.status != 200]  # (the late-rejected tunnel above may finish meanwhile)
    assert (rec.status, rec.src_identity) == (401, "spiffe://cluster.local/ns/default/sa/alice"), rec
    assert "CONNECT refused with status 401" in rec.result

    mesh.write_config()
    await wait_until(lambda: not bob.state.snapshot().policies, timeout=2.0)
    assert await mesh.round_trip(b"allowed again") == b"allowed again"


async def csds(mesh: LocalMesh) -> csds_pb2.ClientStatusResponse:
    ident = IdentityManager(FileSource(mesh.dir / "certs" / "node"))
    await ident.start()
    async with Channel(f"127.0.0.1:{mesh.xds_port}", tls=MeshTls(ident), expected_identities=[ISTIOD_ID]) as ch:
        resp: csds_pb2.ClientStatusResponse = await ch.unary(
            "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
            csds_pb2.ClientStatusRequest(),
            request_codec=ProtoCodec(csds_pb2.ClientStatusRequest),
            response_codec=ProtoCodec(csds_pb2.ClientStatusResponse),
            timeout=5,
        )
    await ident.stop()
    return resp


async def test_nacked_policy_keeps_previous_state_and_shows_in_csds(mesh: LocalMesh) -> None:
    mesh.write_config(DENY_ALICE)
    bob = mesh.agents["bob"]
    await wait_until(lambda: "default/deny-alice" in bob.state.snapshot().policies)
    before = dict(bob.state.snapshot().policies)
    stats = bob.ads.session.types[AUTHORIZATION].stats  # type: ignore[union-attr]
    mesh.write_config(DENY_ALICE + BROKEN_POLICY)
    await wait_until(lambda: stats.nacks >= 1)
    assert "default/broken" in stats.last_nack and "match_type" in stats.last_nack
    assert dict(bob.state.snapshot().policies) == before  # the good state stays in force
    assert await mesh.round_trip(b"still denied") == b""

    status = await csds(mesh)
    nacked = [
        cfg
        for client in status.config
        for cfg in client.generic_xds_configs
        if cfg.type_url == AUTHORIZATION and cfg.client_status == config_dump_shared_pb2.ClientResourceStatus.NACKED
    ]
    assert nacked, status
    assert all("default/broken" in cfg.error_state.details for cfg in nacked)
    assert {c.node.id for c in status.config} >= {a.config.profile.node_id for a in mesh.agents.values()}


async def test_control_plane_restart_keeps_tunnels_and_resumes_without_resend(mesh: LocalMesh) -> None:
    reader, writer = await open_tunnel(mesh)
    assert await echo(reader, writer, b"before restart") == b"before restart"
    clients = {name: agent.ads for name, agent in mesh.agents.items()}
    assert all(c is not None for c in clients.values())
    received = {name: c.session.resources_received() for name, c in clients.items()}  # type: ignore[union-attr]
    connects = {name: c.connects for name, c in clients.items()}  # type: ignore[union-attr]

    port = mesh.xds_port
    await mesh.stop_control_plane()
    # While it is down: reconnect attempts back off (10 ms, doubling), state is kept, the tunnel still works.
    alice_ads = clients["alice"]
    assert alice_ads is not None
    await wait_until(lambda: len(alice_ads.delays) >= 4)
    delays = alice_ads.delays[-3:]
    assert delays[1] == pytest.approx(2 * delays[0]) and delays[2] == pytest.approx(2 * delays[1])
    assert mesh.agents["bob"].state.snapshot().workloads
    assert await echo(reader, writer, b"while down") == b"while down"

    await mesh.start_control_plane(port)
    for name, c in clients.items():
        assert c is not None
        c.reconnect_now()
        await wait_until(lambda c=c, name=name: c.connects > connects[name], timeout=10)  # type: ignore[misc]
    await wait_until(lambda: all(c.connected.is_set() for c in clients.values() if c is not None))
    assert await echo(reader, writer, b"after restart") == b"after restart"
    # Resumed with initial_resource_versions: the unchanged config was not sent again.
    for name, c in clients.items():
        assert c is not None
        assert c.session.resources_received() == received[name], name
    # And a change made after the restart still reaches the agents.
    mesh.write_config(DENY_ALICE)
    await wait_until(lambda: "default/deny-alice" in mesh.agents["bob"].state.snapshot().policies)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_ca_refuses_foreign_identity_and_long_ttl(mesh: LocalMesh) -> None:
    import datetime as dt

    from hbone.errors import GrpcError, GrpcStatus
    from hbone.identity import SpiffeId
    from microxds.istio.ca import IstioCASource

    alice_tls = mesh.agents["alice"].local("default/alice").tls
    async with Channel(f"127.0.0.1:{mesh.xds_port}", tls=alice_tls, expected_identities=[ISTIOD_ID]) as ch:
        own = await IstioCASource(ch, SpiffeId.parse("spiffe://cluster.local/ns/default/sa/alice")).fetch()
        assert str(own.identity) == "spiffe://cluster.local/ns/default/sa/alice"
        bob = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bob")
        with pytest.raises(GrpcError) as err:
            await IstioCASource(ch, bob, impersonate=True).fetch()
        assert err.value.status is GrpcStatus.UNAUTHENTICATED
        with pytest.raises((GrpcError, HboneError)):
            await IstioCASource(ch, bob).fetch()  # the CA signs alice; the client refuses a leaf that is not bob
        with pytest.raises(GrpcError) as err:
            await IstioCASource(ch, own.identity, ttl=dt.timedelta(days=91)).fetch()  # type: ignore[arg-type]
        assert err.value.status is GrpcStatus.INVALID_ARGUMENT
