"""An Envoy built as a waypoint-like HBONE hop carries agent traffic when a service names it as its waypoint.

The waypoint is the two verified recipes back to back (docs/interop.md "Envoy as an HBONE peer"):
`hbone_in` terminates HBONE (mTLS 1.3 + h2 CONNECT) on the waypoint workload's address and hands the bytes to
`connect_originate`, a tcp_proxy that opens HBONE again to bob's node agent with the waypoint's own identity and
`:authority` = bob's IP:target port — the hops Istio's waypoints make (docs/hbone-spec.md).

The mesh config names the waypoint on bob's service and allows only the waypoint's identity into bob, so a round
trip that succeeds can only have gone through Envoy; alice reaching bob's address directly is refused with 401.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hbone.errors import ConnectRefused
from hbone.identity import SpiffeId, write_bundle
from tests.peers import Envoy, envoy_hbone_client_config, envoy_hbone_server_config, envoy_static_cluster, free_port
from tools.localmesh import APP_PORT, LocalMesh

pytestmark = pytest.mark.timeout(90)

WAYPOINT_ID = "spiffe://cluster.local/ns/default/sa/waypoint"
ONLY_VIA_WAYPOINT = """
policies:
  - name: only-via-waypoint
    namespace: default
    action: ALLOW
    selector: { matchLabels: { app: bob } }
    rules:
      - from: [{ source: { principals: ["cluster.local/ns/default/sa/waypoint"] } }]
"""


def waypoint_config(mesh: LocalMesh, certs: Path, *, inner_port: int) -> dict[str, Any]:
    files = {"cert_chain": certs / "cert-chain.pem", "key": certs / "key.pem", "root_cert": certs / "root-cert.pem"}
    cfg = envoy_hbone_server_config(listen_port=mesh.waypoint_port or 0, cluster_name="to_originate", **files)
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = mesh.ip("waypoint")
    # Terminated CONNECT streams go to the re-originating listener instead of ORIGINAL_DST.
    cfg["static_resources"]["clusters"] = [envoy_static_cluster("to_originate", inner_port)]
    bob = mesh.agents["bob"].local("default/bob")
    out = envoy_hbone_client_config(
        target=f"{mesh.ip('bob')}:{APP_PORT}", hbone_port=bob.address[1], hbone_host=mesh.ip("bob"),
        peer_san=str(bob.workload.identity), listen_port=inner_port, listener_name="connect_originate", **files,
    )  # fmt: skip
    cfg["static_resources"]["listeners"] += out["static_resources"]["listeners"]
    cfg["static_resources"]["clusters"] += out["static_resources"]["clusters"]
    return cfg


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[LocalMesh]:
    m = LocalMesh(tmp_path)
    m.waypoint_port = free_port()
    m.write_config(ONLY_VIA_WAYPOINT)
    async with m:
        yield m


async def test_envoy_waypoint_carries_service_traffic(mesh: LocalMesh, tmp_path: Path) -> None:
    certs = tmp_path / "waypoint-certs"
    write_bundle(certs, mesh.ca.issue(SpiffeId.parse(WAYPOINT_ID)))
    async with Envoy(waypoint_config(mesh, certs, inner_port=free_port()), name="envoy-waypoint") as envoy:
        await envoy.wait_ready()
        assert await mesh.round_trip(b"through the waypoint") == b"through the waypoint"
        await envoy.wait_stat("listener.hbone_in.downstream_cx_total", lambda v: int(v) >= 1)
        await envoy.wait_stat("cluster.hbone_upstream.upstream_cx_total", lambda v: int(v) >= 1)
        # Addressing bob's workload directly skips the waypoint, and bob only admits the waypoint.
        with pytest.raises(ConnectRefused) as refused:
            await mesh.agents["alice"].open("default/alice", f"{mesh.ip('bob')}:{APP_PORT}")
        assert refused.value.status == 401
        routes = mesh.agents["alice"].outbound.routes
        assert [k.value for k in routes] == ["waypoint"]
