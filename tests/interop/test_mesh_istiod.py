"""hbone.Mesh against istiod's own code (`istiod-fake`: istio's discovery server and CA on a fake Kubernetes
cluster, TLS + bearer token on one port like 15012): the in-process client gets alice's certificate from istio's
CA, resolves `bob.ns1.svc.cluster.local` through istiod's WDS (Address over Delta) and reaches bob behind a
`microxds agent`, which enforces istiod's ALLOW policy (only alice)."""

from __future__ import annotations

import asyncio

import pytest

from hbone import Mesh
from hbone.testing import start_echo_server
from microxds.istio.node import NodeProfile
from microxds.mesh import XdsControlPlane
from tests.interop.test_istio_agent import APP_PORT, TD, TOKEN, Cluster, cluster  # noqa: F401  (fixture)
from tests.peers import close_server

pytestmark = pytest.mark.timeout(180)


async def test_mesh_client_with_istiod_names_and_ca(cluster: Cluster) -> None:  # noqa: F811
    app, _ = await start_echo_server(cluster.ip(3), APP_PORT)
    bob = cluster.agent("ns1/bob")
    try:
        await bob.start()
        profile = NodeProfile.from_env({
            "XDS_ADDRESS": cluster.istiod.xds_address, "XDS_ROOT_CA": str(cluster.root), "AUTH_TOKEN": TOKEN,
            "CLUSTER_ID": "Kubernetes", "INSTANCE_IP": cluster.ip(1), "POD_NAME": "ztunnel-node1",
            "POD_NAMESPACE": "istio-system", "NODE_NAME": "node1",
        })  # fmt: skip
        # The fake's token is the node's (ztunnel), so the CA is asked on alice's behalf, as ztunnel does.
        cp = XdsControlPlane(profile.xds_address, ca_address=profile.ca_address, transport="tls", profile=profile,
                             impersonate=True, ready_timeout=60)  # fmt: skip
        alice = f"spiffe://{TD}/ns/ns1/sa/alice"
        async with Mesh(control_plane=cp, identity=alice, workload="ns1/alice", hbone_port=cluster.hbone_port) as mesh:
            assert str(mesh.identity) == alice
            reader, writer = await mesh.open_connection("bob.ns1.svc.cluster.local:80")
            assert str(writer.get_extra_info("peer_identity")) == f"spiffe://{TD}/ns/ns1/sa/bob"
            writer.write(b"hello bob")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 15) == b"hello bob"
            writer.close()
    finally:
        await bob.stop()
        await close_server(app)
