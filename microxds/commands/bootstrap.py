"""`microxds bootstrap envoy|grpc --server ADDR`: a working client bootstrap for a microxds server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from microxds.bootstrap import BootstrapOptions, envoy_bootstrap, grpc_bootstrap
from microxds.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="print a working Envoy or proxyless gRPC bootstrap for a microxds server",
        description="Envoy: `envoy -c FILE`. gRPC: GRPC_XDS_BOOTSTRAP=FILE, then dial xds:///LISTENER-NAME.",
    )
    p.add_argument("client", choices=["envoy", "grpc"], help="who reads the bootstrap")
    p.add_argument("--server", required=True, metavar="ADDR", help="HOST:PORT of a microxds listener")
    p.add_argument("--delta", action="store_true", help="Envoy: incremental xDS (DELTA_GRPC) instead of SotW")
    p.add_argument("--node-id", metavar="ID", help="node id (default envoy-1 / grpc-client-1)")
    p.add_argument("--cluster", default="microxds-clients", metavar="NAME", help="node cluster (node groups)")
    p.add_argument("--tls", action="store_true", help="TLS to the server (needs --ca and/or --certs)")
    p.add_argument("--ca", type=Path, metavar="FILE", help="with --tls: trust this CA bundle (serve --tls-listen)")
    p.add_argument("--certs", type=Path, metavar="DIR", help="with --tls: mutual TLS as this identity (--hbone-listen)")
    p.add_argument("--server-identity", metavar="SPIFFE", help="with --certs: the server's expected SPIFFE id")
    p.add_argument("--admin", default="127.0.0.1:9901", metavar="ADDR", help="Envoy admin address; 'off' omits it")
    p.add_argument("--format", choices=["yaml", "json"], help="default: yaml for Envoy, json for gRPC")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> BootstrapOptions:
    if args.tls and args.ca is None and args.certs is None:
        raise ConfigError("--tls needs --ca FILE (server-auth TLS) or --certs DIR (mutual TLS)")
    if (args.ca is not None or args.certs is not None) and not args.tls:
        raise ConfigError("--ca/--certs configure TLS: add --tls")
    if args.server_identity and args.certs is None:
        raise ConfigError("--server-identity is checked in mutual TLS: add --certs DIR")
    if args.delta and args.client == "grpc":
        raise ConfigError("--delta is for Envoy; gRPC clients choose their xDS protocol themselves")
    default_id = "envoy-1" if args.client == "envoy" else "grpc-client-1"
    return BootstrapOptions(
        server=args.server, node_id=args.node_id or default_id, cluster=args.cluster, delta=args.delta,
        ca=args.ca, certs=args.certs, server_identity=args.server_identity,
        admin=None if args.admin == "off" else args.admin,
    )  # fmt: skip


def render(doc: dict[str, object], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    doc = envoy_bootstrap(opts) if args.client == "envoy" else grpc_bootstrap(opts)
    text = render(doc, args.format or ("yaml" if args.client == "envoy" else "json"))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"microxds: wrote {args.client} bootstrap to {args.output}", file=sys.stderr)
    return 0
