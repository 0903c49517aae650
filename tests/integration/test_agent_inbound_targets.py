"""The agent's inbound reaches only the workload it serves, like ztunnel: its own IP, the VIP of a service that
selects it, or a service hostname; any other target (another IP on the node, the control plane's port) is 400.
Main relayed every IP target, so any mesh caller reached everything the node could."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.errors import ConnectRefused
from tools.localmesh import APP_PORT, SERVICE_VIP, LocalMesh

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[LocalMesh]:
    async with LocalMesh(tmp_path) as m:
        yield m


async def test_inbound_refuses_targets_that_are_not_its_workload(mesh: LocalMesh) -> None:
    alice = mesh.agents["alice"].local("default/alice")
    bob = mesh.agents["bob"].local("default/bob")
    client = HboneClient(alice.tls)
    ep = Endpoint(mesh.ip("bob"), mesh.hbone_port, (str(bob.workload.identity),))
    try:
        for target in (f"{mesh.ip('bob')}:{APP_PORT}", f"{SERVICE_VIP}:80"):  # its own IP; its service's VIP
            tunnel = await client.open(target, ep)
            tunnel.write(b"ping")
            assert await asyncio.wait_for(tunnel.read(4), 10) == b"ping"
            tunnel.reset()
        for target in (
            f"127.0.0.1:{mesh.xds_port}",  # the control plane on the node's loopback
            f"{mesh.ip('alice')}:{APP_PORT}",  # another address on the node
        ):
            with pytest.raises(ConnectRefused) as refused:
                await client.open(target, ep)
            assert refused.value.status == 400 and "not a workload this node serves" in refused.value.detail
    finally:
        await client.close()
