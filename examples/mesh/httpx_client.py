"""An httpx client calling a mesh service through `hbone.Mesh` — no node agent, no sidecar.

Against `microxds serve` (the name is resolved over xDS, the certificate comes from its CA):

    python examples/mesh/httpx_client.py --control-plane 127.0.0.1:15012 --certs ./demo/web \\
        http://hello.demo.svc.cluster.local/hi

or straight to an HBONE server with certificates on disk:

    python examples/mesh/httpx_client.py --certs ./demo/web --via 127.0.0.1:15008 \\
        --expect-identity spiffe://cluster.local/ns/demo/sa/hello http://127.0.0.1:8080/hi

`--http2` speaks HTTP/2 inside the tunnel. A refused tunnel prints one line, e.g.
`refused: HBONE tunnel to … refused: CONNECT refused with status 401: denied: …`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

import hbone
from hbone.errors import HboneError
from microxds.mesh import XdsControlPlane


async def main(args: argparse.Namespace) -> int:
    control_plane = XdsControlPlane(args.control_plane, certs=args.certs) if args.control_plane else None
    mesh = hbone.Mesh(None if control_plane else args.certs, control_plane=control_plane, hbone_port=args.hbone_port)
    async with mesh:
        identities = [args.expect_identity] if args.expect_identity else []
        transport = mesh.httpx_transport(http1=not args.http2, http2=args.http2, via=args.via, identities=identities)
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            for _ in range(args.count):
                try:
                    response = await client.get(args.url)
                except hbone.MeshConnectError as e:
                    print(f"refused: {e}", file=sys.stderr)
                    return 1
                print(response.status_code, response.http_version, response.text, flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--certs", required=True, help="workload certificates, or the bootstrap identity for the CA")
    parser.add_argument("--control-plane", help="microxds/istiod mTLS address (xDS + CA)")
    parser.add_argument("--via", help="HBONE server host:port (instead of xDS routing)")
    parser.add_argument("--expect-identity", help="the HBONE server's SPIFFE id (required with --via)")
    parser.add_argument("--hbone-port", type=int, default=15008, help="where mesh workloads accept HBONE")
    parser.add_argument("--http2", action="store_true")
    parser.add_argument("--count", type=int, default=1)
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except (HboneError, httpx.TransportError) as e:
        sys.exit(f"httpx_client: error: {e}")
