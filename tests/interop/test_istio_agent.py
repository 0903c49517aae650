"""`microxds agent` in its istiod profile against istiod's own code (`istiod-fake`: istio's discovery server and
CA on a fake Kubernetes cluster, TLS on one port like 15012).

The cluster holds two pods in `ns1` (alice, bob) and the ztunnel pod on node1, one pod in `ns2` (carol) on node2,
a service for bob and an ALLOW policy (only alice may reach bob). Workloads, services and policies therefore come from
istiod's real ambient index and WDS generator over Delta; certificates come from istio's CA, the agent
impersonating its workloads as ztunnel does (checked by istio's node authorizer against the fake cluster's pods).
Adding a DENY object to the cluster denies new tunnels and closes the open one. The agent sends what istiod expects:
ztunnel's node id and metadata, the bearer token and `clusterid` on every call (recorded by istiod-fake). In the
on-demand Address mode istiod answers the agent's lookups (its workload, a service by hostname) and sends nothing
unasked. (The agent's forwards do not yet trigger on-demand lookups of their targets, so traffic is tested in the
wildcard mode.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbone.identity.certs import CertificateAuthority
from hbone.testing import start_echo_server
from microxds.agent import Agent, AgentConfig, Forward
from microxds.istio.node import NodeProfile
from microxds.resources import ADDRESS
from tests.peers import close_server, free_port
from tests.peers.gopeers import IstiodFake, istiod_certs

pytestmark = pytest.mark.timeout(180)
TD = "cluster.local"
TOKEN = "test-token-of-ztunnel-node1"
APP_PORT = 8080


def cluster_yaml(net: str) -> str:
    def pod(ns: str, name: str, ip: str, sa: str, node: str = "node1") -> str:
        # The CNI marks a pod it redirected; istiod then gives it the HBONE tunnel protocol.
        redirect = "disabled" if ns == "istio-system" else "enabled"
        return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  uid: uid-{ns}-{name}
  labels: {{app: {name}}}
  annotations: {{ambient.istio.io/redirection: {redirect}}}
spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: app, image: app}}]}}
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
  conditions: [{{type: Ready, status: "True"}}]
"""

    docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1, labels: {istio.io/dataplane-mode: ambient}}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns2, labels: {istio.io/dataplane-mode: ambient}}\n",
        pod("istio-system", "ztunnel-node1", f"{net}.1", "ztunnel"),
        pod("ns1", "alice", f"{net}.2", "alice"),
        pod("ns1", "bob", f"{net}.3", "bob"),
        pod("ns2", "carol", f"{net}.4", "carol", node="node2"),
        f"""\
apiVersion: v1
kind: Service
metadata: {{name: bob, namespace: ns1}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: bob}}
  ports: [{{name: tcp, port: 80, targetPort: {APP_PORT}, protocol: TCP}}]
""",
        alice_policy("ALLOW"),
    ]
    return "---\n".join(docs)


def alice_policy(action: str) -> str:
    """An AuthorizationPolicy on bob for alice's identity: ALLOW from the start, DENY applied mid-test."""
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {action.lower()}-alice, namespace: ns1}}
spec:
  selector: {{matchLabels: {{app: bob}}}}
  action: {action}
  rules: [{{from: [{{source: {{principals: ["cluster.local/ns/ns1/sa/alice"]}}}}]}}]
"""


@dataclass
class Cluster:
    istiod: IstiodFake
    net: str
    root: Path
    hbone_port: int

    def ip(self, last: int) -> str:
        return f"{self.net}.{last}"

    def agent(self, workload: str, *, forwards: tuple[Forward, ...] = (), on_demand: bool = False) -> Agent:
        # Exactly what `microxds agent --istiod` builds from ztunnel's environment (NodeProfile.from_env).
        profile = NodeProfile.from_env({
            "XDS_ADDRESS": self.istiod.xds_address, "XDS_ROOT_CA": str(self.root), "AUTH_TOKEN": TOKEN,
            "CLUSTER_ID": "Kubernetes", "INSTANCE_IP": self.ip(1), "POD_NAME": "ztunnel-node1",
            "POD_NAMESPACE": "istio-system", "NODE_NAME": "node1",
        })  # fmt: skip
        cfg = AgentConfig(xds_address=profile.xds_address, ca_address=profile.ca_address, transport="tls",
                          profile=profile, workloads=(workload,), forwards=forwards, hbone_port=self.hbone_port,
                          on_demand=on_demand, ready_timeout=60.0)  # fmt: skip
        return Agent(cfg)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    tls, cacerts = istiod_certs(CertificateAuthority.create_root(TD), TD, tmp_path)
    objects = tmp_path / "cluster.yaml"
    objects.write_text(cluster_yaml(net))
    istiod = IstiodFake(objects, token=TOKEN, pod="istio-system/ztunnel-node1", tls=tls, cacerts=cacerts,
                        trusted_node_accounts="istio-system/ztunnel")  # fmt: skip
    async with istiod:
        await istiod.wait_ready(timeout=120)
        yield Cluster(istiod, net, cacerts / "root-cert.pem", free_port())


async def round_trip(host: str, port: int, payload: bytes = b"hello bob") -> bytes:
    """One connection through the forward; b"" when the mesh refused it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 15)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def wait_for(cond: object, what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


async def test_agents_follow_istiod_policies(cluster: Cluster) -> None:
    app, _ = await start_echo_server(cluster.ip(3), APP_PORT)
    bob = cluster.agent("ns1/bob")
    fwd = Forward(f"{cluster.ip(2)}:0", "bob.ns1.svc.cluster.local:80", "ns1/alice")
    alice = cluster.agent("ns1/alice", forwards=(fwd,))
    try:
        await bob.start()
        await alice.start()
        snap = bob.state.snapshot()
        names = {(w.namespace, w.name) for w in snap.workloads_in_namespace("ns1")}
        assert {("ns1", "alice"), ("ns1", "bob")} <= names
        assert {w.name for w in snap.workloads_in_namespace("ns2")} == {"carol"}
        # Certificates from istio's CA, impersonated by the node identity.
        assert str(bob.workloads["ns1/bob"].identity.identity) == f"spiffe://{TD}/ns/ns1/sa/bob"
        assert str(alice.workloads["ns1/alice"].identity.identity) == f"spiffe://{TD}/ns/ns1/sa/alice"

        port = next(iter(alice.forward_addresses.values()))[1]
        assert await round_trip(cluster.ip(2), port) == b"hello bob"

        # An open tunnel, then a DENY object in the fake cluster: istiod pushes it, bob closes the tunnel.
        reader, writer = await asyncio.open_connection(cluster.ip(2), port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(4), 15) == b"ping"
        await cluster.istiod.apply(alice_policy("DENY"))
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the late rejection
        writer.close()
        inbound = bob.workloads["ns1/bob"].inbound
        await wait_for(lambda: inbound.late_rejections >= 1, "bob's late rejection")
        assert await round_trip(cluster.ip(2), port) == b""
        assert inbound.denied >= 1

        # What istiod saw on every call: the token and the cluster id.
        callers = await cluster.istiod.callers()
        assert callers and all(c["authorization"] == f"Bearer {TOKEN}" for c in callers), callers
        assert all(c["clusterid"] == "Kubernetes" for c in callers), callers
    finally:
        await alice.stop()
        await bob.stop()
        await close_server(app)


async def test_on_demand_agent_against_istiod(cluster: Cluster) -> None:
    """On-demand Address (ztunnel's mode): istiod sends the workloads of the agent's own node unasked, nothing from
    other nodes (carol is on node2); a service is looked up by the name istiod indexes it under."""
    alice = cluster.agent("ns1/alice", on_demand=True)
    try:
        await alice.start()
        assert str(alice.workloads["ns1/alice"].identity.identity) == f"spiffe://{TD}/ns/ns1/sa/alice"
        snap = alice.state.snapshot()
        assert not list(snap.workloads_in_namespace("ns2")), "an on-demand client got node2's carol without asking"
        assert alice.ads is not None
        assert await alice.ads.lookup(ADDRESS, "ns1/bob.ns1.svc.cluster.local", timeout=30)
        assert not await alice.ads.lookup(ADDRESS, "ns1/nobody.ns1.svc.cluster.local", timeout=30)
    finally:
        await alice.stop()
