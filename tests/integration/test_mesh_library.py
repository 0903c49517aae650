"""hbone.Mesh end to end with real processes: httpx (HTTP/1.1 and HTTP/2) in this process → HBONE → the Starlette
example app in another process; names and policies from a real `microxds serve`, certificates from its CA with
rotation while a client keeps sending."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hbone import Mesh, MeshConnectError
from hbone.identity import write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId
from hbone.proxy.outbound import NoRoute
from microxds.mesh import XdsControlPlane
from tests.interop.test_xds_support import Microxds
from tests.peers import LOOPBACK

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "mesh" / "starlette_app.py"
TD = "cluster.local"
HELLO, WEB, MALLORY = (f"spiffe://{TD}/ns/demo/sa/hello", f"spiffe://{TD}/ns/demo/sa/web",
                       f"spiffe://{TD}/ns/other/sa/mallory")  # fmt: skip
PLANE = f"spiffe://{TD}/ns/istio-system/sa/istiod"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = CertificateAuthority.create_root(TD)
    write_ca(tmp_path / "ca", ca)
    out = {"ca": tmp_path / "ca"}
    for name, ident in (("hello", HELLO), ("web", WEB), ("mallory", MALLORY), ("plane", PLANE)):
        out[name] = write_bundle(tmp_path / name, ca.issue(SpiffeId.parse(ident), ips=("127.0.0.1",)))
    return out


@contextlib.asynccontextmanager
async def app_process(*args: str) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """The example Starlette app as a subprocess; yields its HBONE port (it prints it) and the process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(APP), "--listen", f"{LOOPBACK}:0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        port = 0
        while not port:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "the app exited before listening"
            if m := re.search(r"mesh app listening on [\d.]+:(\d+)", line):
                port = int(m.group(1))
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
async def test_httpx_to_asgi_app_in_another_process(pki: dict[str, Path], http2: bool) -> None:
    async with app_process("--certs", str(pki["hello"]), "--authz", "same-namespace") as (port, _):
        via = f"{LOOPBACK}:{port}"
        async with Mesh(pki["web"]) as mesh:
            transport = mesh.httpx_transport(http1=not http2, http2=http2, via=via, identities=[HELLO])
            async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                for i in range(3):  # keep-alive: one tunnel, several requests
                    r = await client.get(f"http://127.0.0.1:8080/n/{i}")
                    assert r.status_code == 200 and r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                    # the app saw our verified identity...
                    assert r.json() == {"caller": WEB, "http_version": "2" if http2 else "1.1", "path": f"/n/{i}"}
            # ...and we checked the app's: expecting another identity fails the handshake check
            wrong = mesh.httpx_transport(http1=not http2, http2=http2, via=via, identities=[MALLORY])
            async with httpx.AsyncClient(transport=wrong) as client:
                with pytest.raises(MeshConnectError, match="not one of the expected") as err:
                    await client.get("http://127.0.0.1:8080/")
                assert err.value.status == 401
        async with Mesh(pki["mallory"]) as outsider:  # another namespace: denied by same-namespace authorization
            transport = outsider.httpx_transport(http1=not http2, http2=http2, via=via, identities=[HELLO])
            async with httpx.AsyncClient(transport=transport) as client:
                with pytest.raises(MeshConnectError, match=r"refused.*401.*denied") as err:
                    await client.get("http://127.0.0.1:8080/")
                assert err.value.status == 401 and isinstance(err.value, httpx.ConnectError)


def _mesh_config(tmp_path: Path) -> Path:
    text = (ROOT / "examples" / "mesh" / "mesh.yaml").read_text()
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return path


async def test_names_policies_and_certificates_from_microxds(pki: dict[str, Path], tmp_path: Path) -> None:
    """The example setup: both ends bootstrap from microxds (CA + xDS); the client resolves the service name over
    xDS, the app enforces the xDS policy (web allowed, mallory 401), and the client's certificate is renewed by
    the CA twice while the same httpx client keeps making requests. (Renewal is triggered with `refresh_now()`,
    the same path the half-life timer takes: the dev CA backdates certificates by 5 minutes, so a TTL short enough
    for a test would already be past its half-life when issued.)"""
    extra = ("--hbone-listen", f"{LOOPBACK}:0", "--certs", str(pki["plane"]), "--ca", str(pki["ca"]))
    async with Microxds(_mesh_config(tmp_path), *extra) as plane:
        cp_addr = "{}:{}".format(*plane.addresses["hbone"])
        async with app_process("--certs", str(pki["hello"]), "--control-plane", cp_addr) as (port, _app):
            cp = XdsControlPlane(cp_addr, certs=pki["web"], cert_ttl=dt.timedelta(hours=1), identities=(PLANE,))
            async with Mesh(control_plane=cp, hbone_port=port) as mesh:
                rotated = asyncio.Event()
                first = mesh.identity_manager.current
                mesh.identity_manager.on_rotate(lambda _b: rotated.set())
                assert first.leaf.not_valid_after_utc - first.leaf.not_valid_before_utc < dt.timedelta(hours=2)
                transport = mesh.httpx_transport(http1=False, http2=True)
                async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                    r = await client.get("http://hello.demo.svc.cluster.local/hi")  # VIP:80 → 127.0.0.1:8080
                    assert r.json()["caller"] == WEB
                    for _ in range(2):
                        rotated.clear()
                        mesh.identity_manager.refresh_now()
                        await asyncio.wait_for(rotated.wait(), 20)
                        r = await client.get("http://hello.demo.svc.cluster.local/again")
                        assert r.status_code == 200 and r.json()["caller"] == WEB
                    assert mesh.identity_manager.current is not first
                    assert mesh.identity_manager.current.chain[0] != first.chain[0]
                    # a new tunnel (new HTTP connection) after the rotations works too
                    r = await client.get("http://10.96.0.20/vip", headers={"connection": "close"})
                    assert r.status_code == 200
            # The httpx example does the same from its own process (output as the README shows it).
            client = ROOT / "examples" / "mesh" / "httpx_client.py"
            for who, want_rc, want in (("web", 0, f'200 HTTP/2 {{"caller":"{WEB}"'), ("mallory", 1, "status 401")):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(client), "--control-plane", cp_addr, "--certs", str(pki[who]),
                    "--hbone-port", str(port), "--http2", "http://hello.demo.svc.cluster.local/hi",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )  # fmt: skip
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == want_rc and want in out.decode(), out.decode()
            denied = XdsControlPlane(cp_addr, certs=pki["mallory"], identities=(PLANE,))
            async with Mesh(control_plane=denied, hbone_port=port) as outsider:
                async with httpx.AsyncClient(transport=outsider.httpx_transport()) as client:
                    with pytest.raises(MeshConnectError) as err:
                        await client.get("http://hello.demo.svc.cluster.local/")
                    assert err.value.status == 401
                with pytest.raises(NoRoute, match="unknown service host nosuch"):
                    await outsider.open_connection("nosuch.demo.svc.cluster.local:80")
