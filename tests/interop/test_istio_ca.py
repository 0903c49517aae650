"""Our Istio CA client and `microxds dump` against istio's own CA and discovery code, served by `istiod-fake` on one
TLS port as istiod's 15012 (istio's `security/pkg/server/ca` with an IstioCA over a plugged-in root, istio's
client-certificate authenticator, the discovery server on a fake cluster).

The real `pilot-discovery` binary builds from the pinned module but cannot run without Kubernetes at this commit
(`--registries= --configDir DIR` panics in serviceentry.newController on the nil multicluster controller), so the
CA is exercised through the same istio packages inside istiod-fake.

- mTLS: a workload certificate from the plugged root authenticates the caller; the chain comes back in istio's
  layout (each certificate its own entry, root last); rotation at half-life fetches a new certificate.
- a caller with neither a client certificate nor a token is refused by istio's CA (Unauthenticated).
- `microxds dump` (mTLS with the workload certificate) lists the clusters istiod generates for a Service, SotW and
  Delta.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbone.errors import GrpcError
from hbone.grpc.client import Channel
from hbone.identity import IdentityManager
from hbone.identity.bundle import write_bundle
from hbone.identity.certs import CertificateAuthority, CertifiedKey, cert_to_pem, spiffe_ids_of
from hbone.identity.spiffe import SpiffeId
from microxds.istio.ca import IstioCASource
from tests.peers import arun_peer
from tests.peers.gopeers import IstiodFake, istiod_certs

pytestmark = pytest.mark.timeout(180)
TD = "cluster.local"
CLIENT_ID = SpiffeId.parse(f"spiffe://{TD}/ns/default/sa/client")
OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: ns1}
---
apiVersion: v1
kind: Service
metadata: {name: bob, namespace: ns1}
spec:
  clusterIP: 10.96.0.10
  selector: {app: bob}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"""


@dataclass
class Istiod:
    peer: IstiodFake
    root: Path
    client_certs: Path


@pytest.fixture
async def istiod(tmp_path: Path) -> AsyncIterator[Istiod]:
    ca = CertificateAuthority.create_root(TD)
    serving, cacerts = istiod_certs(ca, TD, tmp_path)
    client = write_bundle(tmp_path / "client", ca.issue(CLIENT_ID))
    objects = tmp_path / "cluster.yaml"
    objects.write_text(OBJECTS)
    async with IstiodFake(objects, tls=serving, cacerts=cacerts) as peer:
        await peer.wait_ready(timeout=120)
        yield Istiod(peer, cacerts / "root-cert.pem", client)


def mtls_context(istiod: Istiod) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(istiod.root))
    ctx.load_cert_chain(str(istiod.client_certs / "cert-chain.pem"), str(istiod.client_certs / "key.pem"))
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_ca_client_against_istio_ca(istiod: Istiod) -> None:
    async with Channel(istiod.peer.xds_address, ssl=mtls_context(istiod)) as channel:
        first: CertifiedKey = await asyncio.wait_for(IstioCASource(channel, CLIENT_ID).fetch(), 60)
        assert spiffe_ids_of(first.leaf) == [CLIENT_ID]
        root = first.roots[-1]
        assert root.subject == root.issuer and cert_to_pem(root) == istiod.root.read_bytes()
        assert first.leaf.issuer == root.subject

        # Rotation at half-life. istio back-dates not_before by 2 minutes, so a 150 s certificate spans 270 s and
        # its half-life comes ~15 s after issue; a new certificate from istio's CA must replace it then.
        manager = IdentityManager(IstioCASource(channel, CLIENT_ID, ttl=dt.timedelta(seconds=150)))
        installed: list[int] = []
        rotated = asyncio.Event()

        def on_rotate(bundle: CertifiedKey) -> None:
            installed.append(bundle.leaf.serial_number)
            if len(set(installed)) > 1:
                rotated.set()

        manager.on_rotate(on_rotate)
        initial = await asyncio.wait_for(manager.start(), 60)
        try:
            left = initial.not_after - dt.datetime.now(dt.UTC)
            assert dt.timedelta(seconds=100) < left <= dt.timedelta(seconds=160)  # istio honoured the requested TTL
            await asyncio.wait_for(rotated.wait(), 60)
            assert manager.current.leaf.serial_number != initial.leaf.serial_number
            assert spiffe_ids_of(manager.current.leaf) == [CLIENT_ID]
        finally:
            await manager.stop()


async def test_istio_ca_refuses_unauthenticated_caller(istiod: Istiod) -> None:
    ctx = ssl.create_default_context(cafile=str(istiod.root))
    ctx.set_alpn_protocols(["h2"])
    async with Channel(istiod.peer.xds_address, ssl=ctx) as channel:
        with pytest.raises(GrpcError, match=r"(?i)authenticat"):
            await asyncio.wait_for(IstioCASource(channel, CLIENT_ID).fetch(), 60)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_dump_reads_istiod_clusters(istiod: Istiod, delta: bool) -> None:
    # mTLS with the workload certificate: istio authenticates xDS callers on its TLS port as it does CSRs.
    args = [sys.executable, "-m", "microxds.cli", "dump", "--server", istiod.peer.xds_address,
            "--certs", str(istiod.client_certs),
            "--type", "cds", "--json", "--timeout", "60",
            "--node-id", "sidecar~10.0.0.5~client.default~default.svc.cluster.local",
            "--node-meta", "NAMESPACE=default", "--node-meta", "ISTIO_VERSION=1.31.0"]  # fmt: skip
    if delta:
        args += ["--delta", "--names", "*"]
    out = await arun_peer(args, timeout=90)
    assert out.returncode == 0, out.stderr + istiod.peer.log_tail()
    resp = json.loads(out.stdout.splitlines()[0])
    names = {r["name"] for r in resp["resources"]}
    assert "outbound|80||bob.ns1.svc.cluster.local" in names, sorted(names)
    assert {"BlackHoleCluster", "PassthroughCluster"} <= names, sorted(names)
