"""`microxds serve --ca`: the Istio CA API on the HBONE mTLS listener of a real `microxds serve` process."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
from pathlib import Path

import pytest

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.identity import IdentityManager, SpiffeId, load_bundle, write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority
from hbone.tls import MeshTls
from microxds.istio.ca import IstioCASource
from tests.peers import stop_process

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
NODE = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
PLANE = "spiffe://cluster.local/ns/istio-system/sa/istiod"
HOUR = dt.timedelta(hours=1)


async def test_serve_signs_for_callers_and_trusted_nodes(tmp_path: Path) -> None:
    ca = CertificateAuthority.create_root()
    write_ca(tmp_path / "ca", ca)
    for name, ident in (("plane", PLANE), ("node", NODE), ("app", "spiffe://cluster.local/ns/default/sa/app")):
        write_bundle(tmp_path / name, ca.issue(SpiffeId.parse(ident)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "microxds.cli", "serve", "--config", str(ROOT / "examples" / "mesh-config.yaml"),
        "--listen", "off", "--hbone-listen", "127.0.0.1:0", "--certs", str(tmp_path / "plane"),
        "--ca", str(tmp_path / "ca"), "--ca-trusted-node", NODE, "--ca-max-ttl", "7200",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, (await proc.stderr.read()).decode() if proc.stderr else "serve exited"
            if m := re.search(r"hbone listening on [\d.]+:(\d+)", line):
                port = int(m.group(1))

        def channel(who: str) -> Channel:
            tls = MeshTls(IdentityManager.fixed(load_bundle(tmp_path / who)))
            return Channel(f"127.0.0.1:{port}", tls=tls, expected_identities=[PLANE])

        workload = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bob")
        async with channel("node") as node, channel("app") as app:
            got = await IstioCASource(
                node, workload, impersonate=True, ttl=HOUR
            ).fetch()  # a trusted node may impersonate
            assert got.identity == workload and got.roots == (ca.cert,)
            own = await IstioCASource(app, SpiffeId.parse("spiffe://cluster.local/ns/default/sa/app"), ttl=HOUR).fetch()
            assert str(own.identity) == "spiffe://cluster.local/ns/default/sa/app"
            with pytest.raises(GrpcError) as err:  # an ordinary workload may not
                await IstioCASource(app, workload, impersonate=True, ttl=HOUR).fetch()
            assert err.value.status == GrpcStatus.UNAUTHENTICATED
            with pytest.raises(GrpcError) as err:  # over --ca-max-ttl
                await IstioCASource(node, workload, impersonate=True, ttl=3 * HOUR).fetch()
            assert err.value.status == GrpcStatus.INVALID_ARGUMENT
    finally:
        await stop_process(proc, 15)


async def test_ca_needs_the_hbone_listener(tmp_path: Path) -> None:
    write_ca(tmp_path / "ca", CertificateAuthority.create_root())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "microxds.cli", "serve", "--config", str(ROOT / "examples" / "mesh-config.yaml"),
        "--ca", str(tmp_path / "ca"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"--ca needs --hbone-listen" in err
