"""Envoy as the HBONE client of an ASGI app served in process by `hbone.Mesh`: Envoy's tcp_proxy tunnels each
downstream TCP connection as an HTTP/2 CONNECT over mTLS to our listener, and hypercorn's protocol layer inside
the tunnel serves the app, which sees Envoy's SPIFFE id. A peer outside the namespace is refused with 401."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hbone import Mesh
from hbone.testing import TestCA
from tests.peers import Envoy, ahttp_get, envoy_hbone_client_config

pytestmark = pytest.mark.timeout(90)


async def caller_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"caller": scope["extensions"]["hbone"]["peer_identity"], "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _envoy_config(certs: Path, hbone_port: int, listener: str) -> dict[str, Any]:
    return envoy_hbone_client_config(
        target="127.0.0.1:8080",
        hbone_port=hbone_port,
        cert_chain=certs / "cert-chain.pem",
        key=certs / "key.pem",
        root_cert=certs / "root-cert.pem",
        peer_san="spiffe://cluster.local/ns/shop/sa/app",
        listener_name=listener,
    )


async def test_envoy_tunnels_http_into_an_in_process_asgi_app(tmp_path: Path) -> None:
    ca = TestCA()
    app_certs = ca.write(tmp_path / "app", "shop", "app")
    async with Mesh(app_certs) as mesh:
        server = await mesh.serve_asgi(caller_app, host="127.0.0.1", port=0)
        cfg = _envoy_config(ca.write(tmp_path / "envoy", "shop", "envoy"), server.address[1], "hbone_out")
        async with Envoy(cfg) as envoy:
            await envoy.wait_ready()
            port = await envoy.listener_port("hbone_out")
            for i in range(3):  # one tunnel per downstream connection, pooled by Envoy on one HTTP/2 connection
                status, body = await ahttp_get(f"http://127.0.0.1:{port}/r/{i}", timeout=20)
                assert status == 200
                assert json.loads(body) == {"caller": "spiffe://cluster.local/ns/shop/sa/envoy", "path": f"/r/{i}"}
            assert await envoy.wait_stat("cluster.hbone_upstream.upstream_cx_total", lambda v: int(v) >= 1) >= 1
        assert server.tunnels == 3

        # Envoy with an identity of another namespace: the same-namespace default refuses its CONNECT with 401,
        # so Envoy closes the downstream connection without an HTTP answer.
        cfg = _envoy_config(ca.write(tmp_path / "other", "elsewhere", "envoy"), server.address[1], "hbone_denied")
        async with Envoy(cfg) as envoy:
            await envoy.wait_ready()
            port = await envoy.listener_port("hbone_denied")
            with pytest.raises(OSError):
                await ahttp_get(f"http://127.0.0.1:{port}/", timeout=20)
            assert server.tunnels == 4
