"""`hbone demo`: a self-contained local mesh round trip, the README's first command.

Creates a dev mesh CA and two workload identities (alice and bob) under `--dir`, starts bob's mTLS echo service
on loopback, and has alice call it, verifying each side's SPIFFE identity.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from hbone.identity.bundle import load_bundle, write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId
from hbone.testing import start_echo_server
from hbone.tls import check_client_peer, check_server_peer, client_context, server_context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="create a dev mesh (CA + alice + bob) and run an mTLS round trip")
    p.add_argument("--dir", type=Path, default=Path(".mesh"), help="where the CA and identities go (default .mesh)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--message", default="hello from alice")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args.dir, args.trust_domain, args.message))


async def _demo(base: Path, td: str, message: str) -> int:
    ca = CertificateAuthority.create_root(td)
    write_ca(base / "ca", ca)
    alice_id, bob_id = SpiffeId.istio(td, "default", "alice"), SpiffeId.istio(td, "default", "bob")
    for name, sid in (("alice", alice_id), ("bob", bob_id)):
        write_bundle(base / name, ca.issue(sid, dns=("localhost",), ips=("127.0.0.1",)))
    alice, bob = load_bundle(base / "alice"), load_bundle(base / "bob")
    print(f"dev mesh CA ({td}) and identities written to {base}/")

    echo, echo_port = await start_echo_server()

    async def bob_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = check_client_peer(writer.get_extra_info("ssl_object"), td)
        print(f"bob:   accepted mTLS connection from {peer}")
        up_r, up_w = await asyncio.open_connection("127.0.0.1", echo_port)
        up_w.write(await reader.readline())
        writer.write(await up_r.readline())
        await writer.drain()
        up_w.close()
        writer.close()

    server = await asyncio.start_server(bob_handler, "127.0.0.1", 0, ssl=server_context(bob))
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(alice), server_hostname="")
        sslobj = writer.get_extra_info("ssl_object")
        peer = check_server_peer(sslobj, [bob_id])
        print(f"alice: connected to {peer} over {sslobj.version()} (ALPN {sslobj.selected_alpn_protocol()})")
        writer.write(message.encode() + b"\n")
        reply = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\n")
        elapsed = (time.perf_counter() - start) * 1000
        writer.close()
        print(f"alice: echo {reply!r} in {elapsed:.1f} ms")
        return 0 if reply == message else 1
    finally:
        server.close()
        echo.close()
