"""The in-process mesh client against the node proxies: an HTTP app behind `hbone serve` (a subprocess) and behind a
`microxds agent` (configured over xDS by microxds, enforcing its policies), reached by httpx through `hbone.Mesh`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hbone import Mesh, MeshConnectError, TunnelReader, TunnelWriter
from hbone.errors import ConnectRefused, HboneError
from hbone.identity import IdentityManager, SpiffeId
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.state import MeshState
from hbone.testing import TestCA
from hbone.tls import MeshTls
from hbone.wire.authority import Authority
from microxds.mesh import XdsControlPlane
from tests.integration.test_agent_gateway import GATEWAY_ID, ONLY_ALICE, TwoNetworkMesh
from tests.peers import LOOPBACK, NO_ADMIN, close_server, free_port, start_http_server
from tools.localmesh import APP_PORT, DENY_ALICE, ISTIOD_ID, SERVICE_VIP, LocalMesh

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
ALICE = "spiffe://cluster.local/ns/default/sa/alice"
WAYPOINT = "spiffe://cluster.local/ns/default/sa/waypoint"


@contextlib.asynccontextmanager
async def hbone_serve(certs: Path) -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hbone.cli", "serve", "--certs", str(certs), "--listen", f"{LOOPBACK}:0", *NO_ADMIN,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "hbone serve exited"
            if m := re.search(r"mtls=[\d.]+:(\d+)", line):
                port = int(m.group(1))
        yield port
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_httpx_through_hbone_serve(tmp_path: Path) -> None:
    ca = TestCA()
    server_id = str(ca.spiffe("shop", "gateway"))
    app, app_port = await start_http_server(b"behind hbone serve\n")
    try:
        async with hbone_serve(ca.write(tmp_path / "srv", "shop", "gateway")) as port:
            async with Mesh(ca.write(tmp_path / "cli", "shop", "web")) as mesh:
                via = f"{LOOPBACK}:{port}"
                transport = mesh.httpx_transport(via=via, identities=[server_id])
                async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                    for _ in range(2):
                        r = await client.get(f"http://{LOOPBACK}:{app_port}/")
                        assert r.status_code == 200 and r.text == "behind hbone serve\n"
            async with Mesh(ca.write(tmp_path / "other", "elsewhere", "web")) as outsider:
                transport = outsider.httpx_transport(via=f"{LOOPBACK}:{port}", identities=[server_id])
                async with httpx.AsyncClient(transport=transport) as client:
                    with pytest.raises(MeshConnectError) as err:
                        await client.get(f"http://{LOOPBACK}:{app_port}/")
                    assert err.value.status == 401
    finally:
        await close_server(app)


async def test_httpx_through_a_microxds_agent(tmp_path: Path) -> None:
    """microxds (CA + xDS) and bob's agent in front of an HTTP app on bob's address; the app-side mesh client is
    alice without an agent: her certificate comes from the CA, the service name is resolved over xDS, and the
    DENY policy pushed later is enforced by bob's agent (401)."""
    lm = LocalMesh(tmp_path)
    try:
        await lm.start_control_plane()
        app, _ = await start_http_server(b"behind a microxds agent\n", host=lm.ip("bob"), port=APP_PORT)
        await lm.start_agent("bob")
        bootstrap = lm.write_certs("alice", "spiffe://cluster.local/ns/default/sa/alice")
        cp = XdsControlPlane(f"127.0.0.1:{lm.xds_port}", certs=bootstrap, identities=(ISTIOD_ID,))
        async with Mesh(control_plane=cp, workload="default/alice", hbone_port=lm.hbone_port) as mesh:
            assert mesh.identity_manager.current.roots[0] == lm.ca.cert
            async with httpx.AsyncClient(transport=mesh.httpx_transport(), timeout=20) as client:
                r = await client.get("http://bob.default.svc.cluster.local/")
                assert r.status_code == 200 and r.text == "behind a microxds agent\n"
                bob = lm.agents["bob"]
                lm.write_config(DENY_ALICE)
                await asyncio.wait_for(_policy(bob.state, "default/deny-alice"), 10)
                with pytest.raises(MeshConnectError) as err:
                    await client.get("http://bob.default.svc.cluster.local/")
                assert err.value.status == 401
        app.close()
    finally:
        await lm.stop()


async def _policy(state: MeshState, name: str) -> None:
    """Wait for a policy to reach a MeshState, on its change notification."""
    arrived = asyncio.Event()
    unsubscribe = state.subscribe(lambda _c, snap: arrived.set() if name in snap.policies else None)
    try:
        while name not in state.snapshot().policies:
            arrived.clear()
            await arrived.wait()
    finally:
        unsubscribe()


async def test_service_with_a_waypoint_is_reached_through_it(tmp_path: Path) -> None:
    """The agent's routing, reused by the mesh: bob's service names a waypoint, so alice's in-process client tunnels
    to the waypoint (expecting its identity) with the service VIP as the CONNECT target — here the waypoint is
    itself an in-process `Mesh.serve` listener on its own loopback address."""
    lm = LocalMesh(tmp_path)
    lm.waypoint_port = free_port()
    try:
        await lm.start_control_plane()
        seen: asyncio.Future[tuple[str | None, str, str | None]] = asyncio.get_running_loop().create_future()

        async def waypoint(reader: TunnelReader, writer: TunnelWriter) -> None:
            # the sender's workload metadata travels in baggage, as the agent sends it
            name = writer.peer.baggage.get("k8s.deployment.name")
            seen.set_result((str(writer.peer.identity), writer.peer.target, name))
            writer.write(b"via waypoint")
            writer.write_eof()

        waypoint_certs = lm.write_certs("waypoint", WAYPOINT)
        async with Mesh(waypoint_certs, authorization="allow-all") as waypoint_mesh:
            await waypoint_mesh.serve(waypoint, host=lm.ip("waypoint"), port=lm.waypoint_port)
            bootstrap = lm.write_certs("alice", ALICE)
            cp = XdsControlPlane(f"127.0.0.1:{lm.xds_port}", certs=bootstrap, identities=(ISTIOD_ID,))
            async with Mesh(control_plane=cp, workload="default/alice", hbone_port=lm.hbone_port) as mesh:
                reader, writer = await mesh.open_connection("bob.default.svc.cluster.local:80")
                assert str(writer.get_extra_info("peer_identity")) == WAYPOINT
                assert await asyncio.wait_for(reader.read(), 10) == b"via waypoint"
                assert await asyncio.wait_for(seen, 10) == (ALICE, f"{SERVICE_VIP}:80", "alice")
                writer.close()
    finally:
        await lm.stop()


async def test_endpoint_on_another_network_through_its_gateway(tmp_path: Path) -> None:
    """Double HBONE from the in-process client: bob is on net2 behind an east-west gateway, and his agent admits
    only alice, so the echo comes back only if the inner mTLS through the gateway really is alice's, end to end."""
    lm = TwoNetworkMesh(tmp_path)
    gw_tls = MeshTls(IdentityManager.fixed(lm.ca.issue(SpiffeId.parse(GATEWAY_ID))))

    async def to_bobs_node(target: Authority) -> tuple[str, int]:
        return lm.ip("bob"), lm.hbone_port

    gateway = HboneServer(gw_tls, InboundHandler(InboundConfig(resolve=to_bobs_node, own_ports=frozenset())))
    _, lm.gateway_port = await gateway.listen(lm.ip("waypoint"), 0)
    try:
        lm.write_config(ONLY_ALICE)
        await lm.start_control_plane()
        await lm.start_app("bob")
        await lm.start_agent("bob", network="net2")
        bootstrap = lm.write_certs("alice", ALICE)
        cp = XdsControlPlane(f"127.0.0.1:{lm.xds_port}", certs=bootstrap, identities=(ISTIOD_ID,))
        async with Mesh(control_plane=cp, workload="default/alice", hbone_port=lm.hbone_port) as mesh:
            reader, writer = await mesh.open_connection("bob.default.svc.cluster.local:80")
            # the identity reported is the inner (end-to-end) peer's, not the gateway's
            assert str(writer.get_extra_info("peer_identity")) == "spiffe://cluster.local/ns/default/sa/bob"
            writer.write(b"across networks")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"across networks"
            writer.close()
    finally:
        await lm.stop()
        await gateway.close()


async def test_in_process_server_follows_xds_policies_and_closes_denied_tunnels(tmp_path: Path) -> None:
    """bob without an agent: an in-process `Mesh.serve` on bob's address, its certificate from the CA and its
    policies over xDS. alice (also in process) is admitted; a DENY pushed later closes her open tunnel (late
    rejection, as the agent does) and refuses new ones with 401."""
    lm = LocalMesh(tmp_path)
    try:
        await lm.start_control_plane()

        async def echo(reader: TunnelReader, writer: TunnelWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        def control_plane(name: str) -> XdsControlPlane:
            certs = lm.write_certs(name, f"spiffe://cluster.local/ns/default/sa/{name}")
            return XdsControlPlane(f"127.0.0.1:{lm.xds_port}", certs=certs, identities=(ISTIOD_ID,))

        async with Mesh(control_plane=control_plane("bob"), workload="default/bob") as bob:
            server = await bob.serve(echo, host=lm.ip("bob"), port=lm.hbone_port)
            async with Mesh(control_plane=control_plane("alice"), hbone_port=lm.hbone_port) as alice:
                reader, writer = await alice.open_connection("bob.default.svc.cluster.local:80")
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"

                lm.write_config(DENY_ALICE)
                assert bob.state is not None
                await asyncio.wait_for(_policy(bob.state, "default/deny-alice"), 10)
                with pytest.raises(HboneError):  # reset by bob's server
                    await asyncio.wait_for(reader.read(), 10)
                assert server.late_rejections == 1
                with pytest.raises(ConnectRefused) as refused:
                    await alice.open_connection("bob.default.svc.cluster.local:80")
                assert refused.value.status == 401
    finally:
        await lm.stop()
