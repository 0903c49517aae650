"""`microxds serve`: run the control plane on a watched YAML/JSON config file or directory."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from hbone.commands.runtime import stop_on_signals
from hbone.configtext import DURATION
from hbone.identity import load_ca
from microxds.commands.store import add_store_args, store_settings
from microxds.errors import ConfigError
from microxds.server.access import AccessPolicy, JwtVerifier, load_policy
from microxds.server.app import DEFAULT_LINEAR_TYPES, ControlPlane, ServeOptions, node_hash_from_spec, parse_address

HELP = """\
Serve the resources in --config (Envoy's file-based xDS format, a `resources:` list of @type'd resources, plus
the ambient shorthand and `groups:`) to Envoy, proxyless gRPC and ztunnel-style clients over ADS (SotW + Delta),
the per-type xDS services and CSDS. The file (or directory) is watched: a valid edit is pushed within about
--debounce-quiet seconds, an invalid one is reported as file:line and the last good config keeps being served.
With --store the config comes from etcd instead (one key per resource, see `microxds apply`): the prefix is loaded,
then watched from that revision; an invalid key is reported with its key and the last good value keeps serving.
"""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="run the xDS control plane", description=HELP)
    p.add_argument("--config", type=Path, metavar="PATH", help="YAML/JSON file or directory (or --store)")
    add_store_args(p, required=False)
    p.add_argument("--listen", default="127.0.0.1:15010", metavar="ADDR", help="plaintext gRPC (h2c); 'off' to disable")
    p.add_argument("--tls-listen", metavar="ADDR", help="TLS gRPC, e.g. :15012 (server certificate from --certs)")
    p.add_argument("--hbone-listen", metavar="ADDR", help="HBONE mTLS port, e.g. :15008 (caller SPIFFE id verified)")
    p.add_argument("--certs", type=Path, metavar="DIR", help="cert-chain.pem, key.pem, root-cert.pem (watched)")
    p.add_argument(
        "--node-group-by",
        default="id",
        metavar="id|cluster|metadata:KEY[,KEY]",
        help="how a node picks its `groups:` entry in the config (default: node id)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        help="/metrics, /ready, /debug/status (live page), /debug/syncz, /debug/config_dump?node=ID; e.g. :15014",
    )
    p.add_argument("--access", type=Path, metavar="FILE", help="access rules: which identities read which groups")
    p.add_argument(
        "--ca", type=Path, metavar="DIR", help="serve the Istio CA API, signing with this dev CA (hbone ca init)"
    )
    p.add_argument(
        "--ca-trusted-node",
        action="append",
        default=[],
        metavar="SPIFFE_GLOB",
        help="node identity allowed to ask for other identities (ImpersonatedIdentity); repeatable",
    )
    p.add_argument("--ca-max-ttl", type=DURATION, default=90 * 86400, metavar="S", help="longest TTL signed (90d)")
    p.add_argument("--allow-all", action="store_true", help="no access control at all (trusted networks only)")
    p.add_argument("--jwt-key", action="append", default=[], type=Path, metavar="PEM", help="JWT public key")
    p.add_argument("--jwt-issuer", metavar="ISS", help="the JWT issuer (required with --jwt-key)")
    p.add_argument(
        "--jwt-audience",
        action="append",
        default=[],
        metavar="AUD",
        help="accepted JWT audience (required with --jwt-key)",
    )
    p.add_argument("--no-linear", action="store_true", help="serve endpoints/addresses from per-group snapshots")
    p.add_argument("--debounce-quiet", type=DURATION, default=0.1, metavar="S", help="push after S quiet (0.1)")
    p.add_argument("--debounce-max", type=DURATION, default=1.0, metavar="S", help="but at most S after a change (1.0)")
    p.add_argument("--poll-interval", type=DURATION, default=0.2, metavar="S", help="config file poll interval (0.2)")
    p.add_argument("--max-in-flight", type=int, default=100, metavar="N", help="pushes in flight at once (100)")
    p.add_argument("--streams-per-second", type=float, default=200.0, metavar="R", help="new streams/s (200)")
    p.add_argument("--stream-burst", type=int, default=200, metavar="N", help="new-stream burst (200)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    if (args.config is None) == (args.store is None):
        raise ConfigError("give exactly one of --config PATH and --store etcd://HOST:PORT/PREFIX")
    store = store_settings(args) if args.store is not None else None
    for addr in (args.listen if args.listen != "off" else None, args.tls_listen, args.hbone_listen):
        if addr:
            parse_address(addr)  # fail on the command line, not after loading the config
    if args.listen == "off" and not (args.tls_listen or args.hbone_listen):
        raise ConfigError("nothing to serve: --listen off needs --tls-listen or --hbone-listen")
    node_hash_from_spec(args.node_group_by)
    if (args.tls_listen or args.hbone_listen) and args.certs is None:
        raise ConfigError("--tls-listen and --hbone-listen need --certs DIR")
    access: AccessPolicy | None = None
    if args.allow_all and args.access:
        raise ConfigError("--allow-all and --access exclude each other")
    if args.allow_all:
        access = AccessPolicy.allow_all()
    elif args.access:
        access = load_policy(args.access)
    jwt = (
        JwtVerifier.from_files(args.jwt_key, issuer=args.jwt_issuer, audiences=args.jwt_audience)
        if args.jwt_key
        else None
    )
    ca = load_ca(args.ca) if args.ca else None
    if ca is not None and not args.hbone_listen:
        raise ConfigError("--ca needs --hbone-listen: the CA signs for the caller's verified mTLS identity")
    return ServeOptions(
        ca=ca,
        ca_trusted_node_identities=tuple(args.ca_trusted_node),
        ca_max_ttl=dt.timedelta(seconds=args.ca_max_ttl),
        config=args.config,
        listen=None if args.listen == "off" else args.listen,
        tls_listen=args.tls_listen,
        hbone_listen=args.hbone_listen,
        certs=args.certs,
        metrics_listen=args.metrics_listen,
        node_group_by=args.node_group_by,
        access=access,
        jwt=jwt,
        linear_types=() if args.no_linear else DEFAULT_LINEAR_TYPES,
        quiet=args.debounce_quiet,
        max_delay=max(args.debounce_max, args.debounce_quiet),
        poll_interval=args.poll_interval,
        max_in_flight=args.max_in_flight,
        streams_per_second=args.streams_per_second,
        stream_burst=args.stream_burst,
        store=store.url if store else None,
        store_ssl=store.ssl if store else None,
        store_user=store.user if store else None,
        store_password=store.password if store else None,
    )


async def serve(options: ServeOptions) -> None:
    plane = ControlPlane(options)
    await plane.start()
    stop = stop_on_signals()
    try:
        # One line on stdout per listener, so scripts (and tests) can read ports bound with :0.
        for name, (host, port) in plane.addresses.items():
            print(f"microxds: {name} listening on {host}:{port}", flush=True)
        await stop.wait()
    finally:
        await plane.stop()


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    try:
        import uvloop  # used when installed (DESIGN §4), never required

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(options))
    return 0
