"""Subcommands for the capture front ends and gateways; each builds a `FrontendsConfig` and runs it.

`hbone frontends --config FILE` runs every listener of a YAML file; the other commands are the simple case of one
listener type from flags (`hbone socks5 --listen 127.0.0.1:15080 --via HOST:15008 --certs DIR`). `--config` on
any of them supplies the routes (and certs) from a file while the flags add the listener.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from hbone.admin.options import AdminOptions
from hbone.admin.options import add_flags as add_admin_flags
from hbone.commands.frontends_config import (
    LISTENER_TYPES,
    FrontendsConfig,
    listener_from_dict,
    load_frontends_config,
)
from hbone.commands.runtime import add_listener_flags, apply_listener_flags, stop_on_signals, tunnel_idle_timeout
from hbone.configtext import MARK, PORT, UID, parse_target
from hbone.errors import ConfigError
from hbone.proxy.capture_rules import RuleOptions, iptables_rules, nft_rules
from hbone.proxy.redirect import DEFAULT_MARK, CaptureMode
from hbone.proxy.routing import Action, Route, RouteTable, Via


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("frontends", help="run the front ends and gateways listed in a YAML config")
    run.add_argument("--config", type=Path, required=True)
    add_admin_flags(run)
    add_listener_flags(run)
    run.set_defaults(func=cmd_run)

    def simple(name: str, kind: str, help_text: str, *, outbound: bool = True) -> argparse.ArgumentParser:
        return _sub_simple(sub, name, kind, help_text, outbound)

    for name, kind, text in (
        ("socks5", "socks5", "SOCKS5 proxy (RFC 1928/1929) into the mesh, default 127.0.0.1:15080"),
        ("http-proxy", "http-connect", "HTTP/1.1 CONNECT proxy into the mesh, default 127.0.0.1:15081"),
    ):
        p = simple(name, kind, text)
        p.add_argument("--user", action="append", default=[], help="USER:PASSWORD required from clients")

    p = simple("sni-gateway", "sni-gateway", "east-west gateway: route TLS by SNI without terminating (:15443)")
    p.add_argument("--default-port", type=PORT, default=443, help="port for natural (non-Istio) SNI names")

    p = simple("egress", "egress", "egress gateway: mesh mTLS in, allow-listed destinations out", outbound=False)
    p.add_argument("--allow", action="append", default=[], help="allowed destination HOST, *.SUFFIX or HOST:PORT")
    p.add_argument("--caller", action="append", default=[], help="admitted caller SPIFFE id pattern")
    p.add_argument("--tls", action="store_true", help="originate TLS to allowed destinations (verified)")
    p.add_argument("--ca-file", help="CA bundle for --tls (default: system roots)")

    p = simple("double-hbone-gateway", "double-hbone-gateway", "gateway for double HBONE", outbound=False)
    p.add_argument("--service", action="append", default=[], help="SVC-FQDN:PORT=IP:HBONE_PORT")
    p.add_argument("--network", default="", help="this gateway's network")

    p = simple("ingress", "ingress-tcp", "ingress gateway: one raw TCP listener to a mesh target")
    p.add_argument("--target", required=True, help="mesh HOST:PORT")

    cap = sub.add_parser("capture", help="transparent capture (REDIRECT/TPROXY) and its iptables/nft rules")
    csub = cap.add_subparsers(dest="capture_command", required=True, metavar="MODE")
    for mode in ("redirect", "tproxy"):
        _sub_simple(csub, mode, mode, f"outbound capture with {mode.upper()} on :15001")
    inbound = _sub_simple(csub, "inbound", "inbound-plaintext", "plaintext inbound capture on :15006", False)
    inbound.add_argument("--proxy-protocol", action="store_true", help="write a PROXY v2 header to the app")
    inbound.add_argument("--tproxy", action="store_true", help="TPROXY instead of REDIRECT")
    rules = csub.add_parser("print-rules", help="print the iptables/nft rules for capture (runs nothing)")
    rules.add_argument("--mode", choices=["redirect", "tproxy"], default="redirect")
    rules.add_argument("--format", choices=["iptables", "nft"], default="iptables")
    rules.add_argument("--outbound-port", type=PORT, default=15001)
    rules.add_argument("--inbound-port", type=PORT, help="also capture inbound TCP to this port (e.g. 15006)")
    rules.add_argument("--include-cidr", action="append", default=[], help="capture only these destinations")
    rules.add_argument(
        "--exclude-port", action="append", type=PORT,
        help="destination ports never captured (default: 15008, or none when the proxy marks its HBONE dials)",
    )  # fmt: skip
    rules.add_argument("--exclude-uid", action="append", type=UID, default=[], help="never capture this owner")
    rules.add_argument(
        "--mark", type=MARK,
        help="SO_MARK the proxy puts on all its own connections (the frontends `mark:`); its traffic is skipped "
        "by mark instead of by HBONE port (default mark 0x539, which only the proxy's direct dials carry)",
    )  # fmt: skip
    rules.add_argument("--config", type=Path, help="frontends YAML: take --mark from its `mark:`")
    rules.add_argument("--no-ipv6", action="store_true")
    rules.set_defaults(func=cmd_print_rules)

    h2r = sub.add_parser("h2r", help="reverse tunnels: a gateway, or a node behind NAT that dials it")
    hsub = h2r.add_subparsers(dest="h2r_command", required=True, metavar="ROLE")
    gw = _sub_simple(hsub, "gateway", "h2r-gateway", "accept node registrations (mTLS, :15441)", True)
    gw.add_argument("--hbone-listen", help="HBONE listener for mesh clients reaching nodes (HOST:PORT)")
    gw.add_argument("--name", action="append", default=[], help="NAME=SPIFFE-ID a node may serve")
    node = _sub_simple(hsub, "node", "h2r-node", "dial the gateway and serve tunnels through it", False)
    node.add_argument("--gateway", required=True, help="gateway HOST:PORT")
    node.add_argument(
        "--gateway-identity", action="append", default=[], help="the gateway's SPIFFE id (required; repeatable)"
    )
    node.add_argument("--name", action="append", default=[], help="a name this node serves (resolves locally)")


#: Listener types that accept through `hbone.proxy.listener` (the HBONE-server ones have their own cap).
_GATED = frozenset({"socks5", "http-connect", "sni-gateway", "ingress-tcp", "redirect", "tproxy", "inbound-plaintext"})


def _sub_simple(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, kind: str, text: str, outbound: bool = True
) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text)
    default = LISTENER_TYPES[kind][0]
    if default is not None:
        p.add_argument("--listen", default=default, help=f"HOST:PORT (default {default})")
    elif kind != "h2r-node":
        p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--certs", type=Path, help="our certificate directory (Istio or SPIFFE layout)")
    p.add_argument("--config", type=Path, help="YAML with routes/certs (see README); flags add the listener")
    if outbound:
        p.add_argument("--via", help="send everything through this HBONE server HOST:PORT")
        p.add_argument("--expect-identity", action="append", default=[], help="accepted --via SPIFFE id")
        p.add_argument("--token-file", help="bearer token for the --via hop (re-read per tunnel)")
        p.add_argument("--direct", action="store_true", help="without --via: dial destinations directly")
    add_admin_flags(p)
    if kind in _GATED:
        add_listener_flags(p)
    p.set_defaults(func=cmd_simple, kind=kind)
    return p


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=") if "=" in item else item.partition(":")
        if not eq or not key or not value:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> FrontendsConfig:
    """The YAML config (if any) plus one listener and the --via route from flags."""
    cfg = load_frontends_config(args.config) if args.config else FrontendsConfig()
    if args.certs:
        cfg.certs = args.certs
    if getattr(args, "via", None):
        via = Via(parse_target(args.via, "--via"), tuple(args.expect_identity))
        cfg.routes = RouteTable(cfg.routes.routes, Route("via", Action.HBONE, via=via, token_file=args.token_file))
    elif getattr(args, "direct", False):
        cfg.routes = RouteTable(cfg.routes.routes, Route("direct", Action.DIRECT))
    kind: str = args.kind
    entry: dict[str, object] = {"type": kind}
    if getattr(args, "listen", None):
        entry["listen"] = args.listen
    if kind in ("socks5", "http-connect") and args.user:
        entry["users"] = _pairs(args.user, "--user")
    elif kind == "sni-gateway":
        entry["default_port"] = args.default_port
    elif kind == "egress":
        rule: dict[str, object] = {"name": "cli", "match": _allow_match(args.allow), "callers": args.caller}
        if args.tls:
            rule["tls"] = {"ca_file": args.ca_file} if args.ca_file else {}
        entry["allow"] = [rule] if args.allow else []
    elif kind == "double-hbone-gateway":
        entry["services"] = _pairs(args.service, "--service")
        entry["network"] = args.network
    elif kind == "ingress-tcp":
        entry["target"] = args.target
    elif kind == "inbound-plaintext":
        entry["proxy_protocol"] = args.proxy_protocol
        entry["capture"] = "tproxy" if args.tproxy else "redirect"
    elif kind == "h2r-gateway":
        entry["names"] = _pairs(args.name, "--name")
        if args.hbone_listen:
            entry["hbone_listen"] = args.hbone_listen
    elif kind == "h2r-node":
        entry.update(gateway=args.gateway, gateway_identities=args.gateway_identity, names=args.name)
    cfg.listeners.append(listener_from_dict(entry, "flags"))
    return cfg


def _allow_match(items: list[str]) -> dict[str, list[object]]:
    hosts: list[object] = []
    ports: list[object] = []
    for item in items:
        tail = item.rpartition(":")[2]
        host, _, port = item.rpartition(":") if tail.isascii() and tail.isdigit() else (item, "", "")
        hosts.append(host)
        if port:
            ports.append(int(port))
    return {"hosts": hosts, "ports": ports}


def cmd_simple(args: argparse.Namespace) -> int:
    apply_listener_flags(args)
    cfg = config_from_args(args)
    cfg.tunnel_idle_timeout = tunnel_idle_timeout(args, cfg.tunnel_idle_timeout)
    return asyncio.run(run(cfg, admin=AdminOptions.resolve(args, cfg.admin_ports)))


def cmd_run(args: argparse.Namespace) -> int:
    apply_listener_flags(args)
    cfg = load_frontends_config(args.config)
    cfg.tunnel_idle_timeout = tunnel_idle_timeout(args, cfg.tunnel_idle_timeout)
    return asyncio.run(run(cfg, admin=AdminOptions.resolve(args, cfg.admin_ports)))


def cmd_print_rules(args: argparse.Namespace) -> int:
    mark: int | None = args.mark
    if mark is None and args.config is not None:
        mark = load_frontends_config(args.config).mark
    # With a configured mark every connection the proxy makes (HBONE dials included) carries it, so the mark
    # rule alone keeps them out of capture; without one, HBONE dials are unmarked and 15008 must be excluded.
    default_ports: tuple[int, ...] = () if mark is not None else (15008,)
    options = RuleOptions(
        mode=CaptureMode(args.mode),
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        include_cidrs=tuple(args.include_cidr),
        exclude_ports=tuple(args.exclude_port) if args.exclude_port is not None else default_ports,
        mark=mark if mark is not None else DEFAULT_MARK,
        exclude_uids=tuple(args.exclude_uid),
        ipv6=not args.no_ipv6,
    )
    lines = nft_rules(options) if args.format == "nft" else iptables_rules(options)
    print("\n".join(lines))
    return 0


async def run(
    cfg: FrontendsConfig,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    admin: AdminOptions | None = None,
) -> int:
    from hbone.admin.service import Observability  # heavy imports only when running
    from hbone.commands.frontends_runtime import Runtime  # the composition root

    runtime = Runtime(cfg)
    await runtime.start()
    obs = Observability(admin or AdminOptions.off(), runtime.view())
    try:
        await obs.start()
    except BaseException:
        await runtime.close()
        raise
    for line in [*runtime.describe(), *obs.describe()]:
        print(f"hbone: {line}", file=sys.stderr, flush=True)
    stop = stop_on_signals(stop)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await obs.stop()
        await runtime.close()
    return 0


__all__ = ["config_from_args", "register", "run"]
