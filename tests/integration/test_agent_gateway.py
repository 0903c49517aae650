"""Double HBONE: bob is on another network behind a gateway; alice's agent tunnels mTLS + CONNECT inside a tunnel.

The gateway here is the smallest one that behaves like an east-west gateway: an HBONE server that routes the outer
`CONNECT bob.default.svc.cluster.local:80` to bob's node (HBONE port) and relays the bytes opaquely, so the inner
mTLS runs end to end between alice and bob's agent (docs/hbone-spec.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hbone.identity import IdentityManager, SpiffeId
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.tls import MeshTls
from hbone.wire.authority import Authority
from tools.localmesh import APP_PORT, SERVICE_VIP, LocalMesh

pytestmark = pytest.mark.timeout(60)
GATEWAY_ID = "spiffe://cluster.local/ns/istio-system/sa/eastwest"
# bob admits alice only: the tunnel works only if the inner mTLS really is alice's, end to end.
ONLY_ALICE = """
policies:
  - name: only-alice
    namespace: default
    action: ALLOW
    workloads: [bob]
    rules:
      - from: [{ source: { principals: ["cluster.local/ns/default/sa/alice"] } }]
"""


class TwoNetworkMesh(LocalMesh):
    """bob on network net2, reachable through the gateway at the `waypoint` address of the subnet."""

    gateway_port = 0

    def base_config(self) -> str:
        gw = self.ip("waypoint")
        return f"""
workloads:
  - {{ name: alice, namespace: default, addresses: ["{self.ip("alice")}"], serviceAccount: alice }}
  - {{ name: bob, namespace: default, addresses: ["{self.ip("bob")}"], serviceAccount: bob, network: net2,
      networkGateway: {{ address: "{gw}", network: net2, port: {self.gateway_port} }} }}
  - {{ name: eastwest, namespace: istio-system, addresses: ["{gw}"], serviceAccount: eastwest, network: net2 }}
services:
  - name: bob
    namespace: default
    addresses: ["{SERVICE_VIP}"]
    ports: [{{ port: 80, targetPort: {APP_PORT} }}]
    workloads: [bob]
"""


async def test_double_hbone_through_a_network_gateway(tmp_path: Path) -> None:
    mesh = TwoNetworkMesh(tmp_path)
    gw_tls = MeshTls(IdentityManager.fixed(mesh.ca.issue(SpiffeId.parse(GATEWAY_ID))))
    hops: list[str] = []

    async def to_bobs_node(target: Authority) -> tuple[str, int]:
        hops.append(str(target))
        return mesh.ip("bob"), mesh.hbone_port

    gateway = HboneServer(gw_tls, InboundHandler(InboundConfig(resolve=to_bobs_node, own_ports=frozenset())))
    _, mesh.gateway_port = await gateway.listen(mesh.ip("waypoint"), 0)
    try:
        mesh.write_config(ONLY_ALICE)
        await mesh.start_control_plane()
        await mesh.start_app("bob")
        await mesh.start_agent("bob", network="net2")
        await mesh.start_agent("alice")
        stream = await mesh.agents["alice"].open("default/alice", f"{SERVICE_VIP}:80")
        stream.write(b"across networks")
        stream.write_eof()
        got = b""
        while chunk := await stream.read():
            got += chunk
        assert got == b"across networks"
        assert hops == ["bob.default.svc.cluster.local:80"]  # the gateway saw only the outer authority
        bob_inbound = mesh.agents["bob"].local("default/bob").inbound
        assert bob_inbound.handler.total == 1  # the inner CONNECT, authenticated end to end as alice
        assert "default/only-alice" in mesh.agents["bob"].state.snapshot().policies
    finally:
        await mesh.stop()
        await gateway.close()
