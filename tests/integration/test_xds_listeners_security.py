"""`microxds serve` listeners: `--tls-listen` follows certificate rotation (main kept the first certificate for
the life of the process), and the CA signs only for callers with a verified SPIFFE id: on the HBONE mTLS listener,
or with a client certificate on the TLS listener; plaintext and anonymous TLS callers are refused (README)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.client import Channel
from hbone.identity import SpiffeId, write_bundle
from hbone.identity.certs import CertificateAuthority
from hbone.tls import peer_certificate
from microxds.istio.ca import IstioCASource
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(60)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLANE = SpiffeId.parse("spiffe://cluster.local/ns/istio-system/sa/istiod")
APP = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/app")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, CertificateAuthority, Path]]:
    ca = CertificateAuthority.create_root()
    write_bundle(tmp_path / "plane", ca.issue(PLANE))
    opts = ServeOptions(
        config=EXAMPLES / "mesh-config.yaml",
        listen="127.0.0.1:0",
        tls_listen="127.0.0.1:0",
        hbone_listen="127.0.0.1:0",
        certs=tmp_path / "plane",
        ca=ca,
    )
    cp = ControlPlane(opts)
    await cp.start()
    try:
        yield cp, ca, tmp_path
    finally:
        await cp.stop(0.5)


async def _serial_of_tls_listener(cp: ControlPlane, roots: bytes) -> int:
    host, port = cp.addresses["tls"]
    ctx = ssl.create_default_context(cadata=roots.decode())
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        cert = peer_certificate(writer.get_extra_info("ssl_object"))
        assert cert is not None
        return cert.serial_number
    finally:
        writer.close()


async def test_tls_listener_follows_rotation(plane: tuple[ControlPlane, CertificateAuthority, Path]) -> None:
    cp, ca, tmp = plane
    manager = cp._identity
    assert manager is not None
    roots = manager.current.roots_pem()
    first = await _serial_of_tls_listener(cp, roots)
    rotated = asyncio.Event()
    manager.on_rotate(lambda _b: rotated.set())
    fresh = ca.issue(PLANE)
    write_bundle(tmp / "plane", fresh)
    manager.refresh_now()
    await asyncio.wait_for(rotated.wait(), 20)
    assert manager.current.chain[0].serial_number == fresh.chain[0].serial_number
    assert await _serial_of_tls_listener(cp, roots) == fresh.chain[0].serial_number != first


async def test_ca_signs_only_for_verified_callers(plane: tuple[ControlPlane, CertificateAuthority, Path]) -> None:
    cp, ca, _ = plane
    roots = ca.issue(APP).roots_pem()
    anonymous_tls = ssl.create_default_context(cadata=roots.decode())
    anonymous_tls.check_hostname = False
    anonymous_tls.set_alpn_protocols(["h2"])
    for name, channel in (
        ("plaintext", Channel("{}:{}".format(*cp.addresses["plaintext"]))),
        ("tls", Channel("{}:{}".format(*cp.addresses["tls"]), ssl=anonymous_tls)),
    ):
        async with channel:
            with pytest.raises(GrpcError) as refused:
                await IstioCASource(channel, APP).fetch()
            assert refused.value.status == GrpcStatus.UNAUTHENTICATED, name
