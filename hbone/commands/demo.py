"""`hbone demo`: a self-contained local mesh on loopback, the README's first command.

Creates a dev mesh CA and three workload identities under `--dir`: alice and bob in namespace `default`,
mallory in `other`. Bob runs an HBONE server (the brief's same-namespace policy) in front of an echo app; alice
tunnels to the app through it (allowed, identities verified both ways) and mallory is refused with 401.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from hbone.authz.defaults import DefaultMode, default_policies
from hbone.client import Endpoint, HboneClient
from hbone.errors import ConnectRefused
from hbone.identity import IdentityManager
from hbone.identity.bundle import load_bundle, write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId
from hbone.proxy.inbound import InboundConfig, InboundHandler, policy_authorizer
from hbone.server import HboneServer
from hbone.testing import start_echo_server
from hbone.tls import MeshTls


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="a local HBONE mesh on loopback: CA, alice, bob, mallory, one policy")
    p.add_argument("--dir", type=Path, default=Path(".mesh"), help="where the CA and identities go (default .mesh)")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--message", default="hello from alice")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args.dir, args.trust_domain, args.message))


def _mesh(base: Path, name: str) -> MeshTls:
    return MeshTls(IdentityManager.fixed(load_bundle(base / name)))


async def _demo(base: Path, td: str, message: str) -> int:
    ca = CertificateAuthority.create_root(td)
    write_ca(base / "ca", ca)
    ids = {
        "alice": SpiffeId.istio(td, "default", "alice"),
        "bob": SpiffeId.istio(td, "default", "bob"),
        "mallory": SpiffeId.istio(td, "other", "mallory"),
    }
    for name, sid in ids.items():
        write_bundle(base / name, ca.issue(sid, dns=("localhost",), ips=("127.0.0.1",)))
    print(f"dev mesh CA ({td}) and identities alice, bob, mallory written to {base}/")

    echo, echo_port = await start_echo_server()
    bob_tls = _mesh(base, "bob")
    policies = default_policies(DefaultMode.SAME_NAMESPACE, ids["bob"])
    inbound = InboundHandler(InboundConfig(authorize=policy_authorizer(policies), namespace="default", tls=bob_tls))
    server = HboneServer(bob_tls, inbound)
    _, port = await server.listen("127.0.0.1", 0)
    print(f"bob:     HBONE server on 127.0.0.1:{port} (mTLS, same-namespace policy), app on 127.0.0.1:{echo_port}")
    endpoint = Endpoint.parse(f"127.0.0.1:{port}", identities=[ids["bob"]])
    target = f"127.0.0.1:{echo_port}"
    alice, mallory = HboneClient(_mesh(base, "alice")), HboneClient(_mesh(base, "mallory"))
    try:
        start = time.perf_counter()
        tunnel = await alice.open(target, endpoint)
        tunnel.write(message.encode())
        tunnel.write_eof()
        reply = b""
        while chunk := await asyncio.wait_for(tunnel.read(), 10):
            reply += chunk
        elapsed = (time.perf_counter() - start) * 1000
        sslobj = next(iter(server.connections)).ssl_object
        print(
            f"alice:   CONNECT {target} via bob -> {tunnel.status}, server identity {tunnel.peer_identity}"
            f" ({sslobj.version() if sslobj else '?'}, ALPN h2)"
        )
        print(f"alice:   echo {reply.decode()!r} in {elapsed:.1f} ms")
        try:
            await mallory.open(target, endpoint)
            print("mallory: unexpectedly allowed")
            return 1
        except ConnectRefused as e:
            print(f"mallory: CONNECT {target} via bob -> {e.status} ({e.detail})")
        return 0 if reply.decode() == message else 1
    finally:
        await alice.close()
        await mallory.close()
        await server.close()
        echo.close()
