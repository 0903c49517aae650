"""A Starlette app served over HBONE by `hbone.Mesh` — no sidecar — printing who calls it.

Against `microxds serve` (certificates from its CA, policies over xDS):

    microxds serve --config examples/mesh/mesh.yaml --hbone-listen 127.0.0.1:15012 \\
        --certs ./demo/plane --ca ./demo/ca
    python examples/mesh/starlette_app.py --control-plane 127.0.0.1:15012 --certs ./demo/hello \\
        --listen 127.0.0.1:15008

or with certificates on disk only (same-namespace authorization):

    python examples/mesh/starlette_app.py --certs ./demo/hello --listen 127.0.0.1:15008

`--listen` may use port 0 (an ephemeral port, printed). Each request prints `caller <spiffe id> <method> <path>`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import hbone
from hbone.errors import HboneError
from microxds.mesh import XdsControlPlane


async def hello(request: Request) -> JSONResponse:
    caller = request.scope["extensions"]["hbone"]["peer_identity"]
    print(f"caller {caller} {request.method} {request.url.path}", flush=True)
    return JSONResponse({"caller": caller, "http_version": request.scope["http_version"], "path": request.url.path})


app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])


async def main(args: argparse.Namespace) -> None:
    control_plane = None
    if args.control_plane:
        control_plane = XdsControlPlane(args.control_plane, certs=args.certs)
    host, _, port = args.listen.rpartition(":")
    async with hbone.Mesh(None if control_plane else args.certs, control_plane=control_plane) as mesh:
        server = await mesh.serve_asgi(app, host=host, port=int(port), authorization=args.authz)
        print(f"mesh app listening on {server.address[0]}:{server.address[1]} as {mesh.identity}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certs", required=True, help="workload certificates, or the bootstrap identity for the CA")
    parser.add_argument("--control-plane", help="microxds/istiod mTLS address (xDS + CA)")
    parser.add_argument("--listen", default="127.0.0.1:15008")
    parser.add_argument("--authz", help="same-namespace | allow-all | xds (default: xds with a control plane)")
    try:
        asyncio.run(main(parser.parse_args()))
    except HboneError as e:
        sys.exit(f"starlette_app: error: {e}")
