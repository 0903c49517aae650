"""`microxds status`: istioctl proxy-status over CSDS, against microxds or any server implementing CSDS.

Without NODE: one line per connected proxy and per type SYNCED (ACKed what the server has), STALE (a push is on
its way or not ACKed yet), NACKED (rejected the last push) or NOT SENT. With NODE: per type, the resources that
differ between what the proxy ACKed and what the server would send now, and the NACK's error detail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2

from hbone.configtext import DURATION
from hbone.errors import GrpcError, HboneError
from hbone.grpc.codec import ProtoCodec
from microxds.commands.dump import channel_for
from microxds.errors import ConfigError
from microxds.server.status import short_type

FETCH = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
_CLIENT = config_dump_shared_pb2.ClientResourceStatus


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="per proxy and type: SYNCED, STALE, NACKED or NOT SENT (CSDS)", description=__doc__
    )
    p.add_argument("node", nargs="?", metavar="NODE", help="one node id: show the resources that differ")
    p.add_argument("--server", action="append", metavar="ADDR", help="CSDS server HOST:PORT, repeatable "
                   "(default 127.0.0.1:15010)")  # fmt: skip
    sec = p.add_mutually_exclusive_group()
    sec.add_argument("--plaintext", action="store_true", help="h2c, no TLS (the default without --certs/--ca)")
    sec.add_argument("--certs", type=Path, metavar="DIR", help="mesh mTLS with this identity")
    sec.add_argument("--ca", type=Path, metavar="FILE", help="server-auth TLS, trusting this CA bundle")
    p.add_argument("--expect-identity", action="append", default=[], metavar="ID",
                   help="with --certs: accepted server SPIFFE id (default: istiod's in our trust domain)")  # fmt: skip
    p.add_argument("--token-file", type=Path, metavar="FILE", help="send `authorization: Bearer <file content>`")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=DURATION, default=10.0, metavar="S", help="per server (10)")
    p.set_defaults(func=run)


@dataclass
class TypeState:
    state: str
    resources: int = 0
    diff: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Proxy:
    server: str
    node: str
    cluster: str
    types: dict[str, TypeState]


_CONFIG = {csds_pb2.SYNCED: "SYNCED", csds_pb2.STALE: "STALE", csds_pb2.NOT_SENT: "NOT SENT",
           csds_pb2.ERROR: "NACKED", csds_pb2.UNKNOWN: "UNKNOWN"}  # fmt: skip


def _type_state(words: list[str]) -> str:
    """NACKED or STALE if any resource is; NOT SENT if nothing was sent; else SYNCED (a requested name the server
    does not have is never sent: it shows in the NODE view, it does not make the type stale)."""
    for word in ("NACKED", "STALE", "UNKNOWN"):
        if word in words:
            return word
    return "SYNCED" if "SYNCED" in words else "NOT SENT"


def summarize(server: str, resp: csds_pb2.ClientStatusResponse) -> list[Proxy]:
    """One `Proxy` per ClientConfig: per type the state of its resources, and every resource not SYNCED."""
    proxies = []
    for config in resp.config:
        words: dict[str, list[str]] = {}
        types: dict[str, TypeState] = {}
        for cfg in config.generic_xds_configs:
            word = "NACKED" if cfg.client_status == _CLIENT.NACKED else _CONFIG.get(cfg.config_status, "UNKNOWN")
            words.setdefault(cfg.type_url, []).append(word)
            st = types.setdefault(cfg.type_url, TypeState(word))
            if word != "NOT SENT":
                st.resources += 1
            if word != "SYNCED":
                st.diff.append(_difference(cfg, word))
            if cfg.error_state.details:
                st.error = cfg.error_state.details
        for type_url, st in types.items():
            st.state = _type_state(words[type_url])
        proxies.append(Proxy(server, config.node.id, config.node.cluster, types))
    return proxies


def _difference(cfg: csds_pb2.ClientConfig.GenericXdsConfig, word: str) -> dict[str, Any]:
    held = cfg.version_info or None
    if word == "NOT SENT":
        change = "+"  # the server has it (or the proxy asked for it); the proxy does not
    elif cfg.client_status == _CLIENT.DOES_NOT_EXIST:
        change = "-"  # the proxy holds it; the server no longer has it
    elif word == "NACKED":
        change = "!"
    else:
        change = "~"  # the proxy holds an older version, or has not ACKed the newest yet
    return {"name": cfg.name, "change": change, "acked_version": held, "state": word}


async def fetch(args: argparse.Namespace, server: str) -> csds_pb2.ClientStatusResponse:
    req = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    if args.node:
        req.node_matchers.add().node_id.exact = args.node
    ns = argparse.Namespace(**{**vars(args), "server": server})
    async with channel_for(ns) as channel:
        return await channel.unary(
            FETCH,
            req,
            request_codec=ProtoCodec(csds_pb2.ClientStatusRequest),
            response_codec=ProtoCodec(csds_pb2.ClientStatusResponse),
            timeout=args.timeout,
        )


def table(proxies: Iterable[Proxy], out: TextIO) -> None:
    proxies = sorted(proxies, key=lambda p: (p.node, p.server))
    kinds = sorted({t for p in proxies for t in p.types}, key=lambda t: (short_type(t), t))
    head = ["NAME", "CLUSTER", *(short_type(t).upper() for t in kinds), "SERVER"]
    rows = [head]
    for p in proxies:
        cells = [p.types[t].state if t in p.types else "-" for t in kinds]
        rows.append([p.node or "-", p.cluster or "-", *cells, p.server])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def details(proxies: list[Proxy], out: TextIO) -> None:
    for p in proxies:
        out.write(f"{p.node} on {p.server} (cluster {p.cluster or '-'})\n")
        for type_url, st in sorted(p.types.items()):
            out.write(f"  {short_type(type_url).upper():<8} {st.state:<9} {st.resources} resources  {type_url}\n")
            if st.error:
                out.write(f"    NACK: {' '.join(st.error.split())}\n")
            for d in st.diff:
                why = {
                    "+": "not sent to the proxy yet",
                    "-": "removed on the server, the proxy still holds it",
                    "~": "the server has a newer version than the proxy ACKed",
                    "!": "rejected by the proxy",
                }
                verb = "sent" if d["change"] == "!" else "proxy has"
                held = f" ({verb} {d['acked_version']})" if d["acked_version"] else ""
                out.write(f"    {d['change']} {d['name']}{held}: {why[d['change']]}\n")  # fmt: skip
            if not st.diff and not st.error:
                out.write("    in sync: the proxy ACKed every resource the server would send now\n")


async def status(args: argparse.Namespace, out: TextIO) -> int:
    servers = args.server or ["127.0.0.1:15010"]
    results = await asyncio.gather(*(fetch(args, s) for s in servers), return_exceptions=True)
    proxies: list[Proxy] = []
    failed = 0
    for server, result in zip(servers, results, strict=True):
        if isinstance(result, GrpcError | HboneError | OSError | TimeoutError):
            print(f"microxds status: {server}: {result}", file=sys.stderr)
            failed += 1
        elif isinstance(result, BaseException):
            raise result
        else:
            proxies.extend(summarize(server, result))
    if args.json:
        out.write(json.dumps([_as_json(p) for p in proxies], indent=1) + "\n")
    elif args.node:
        if not proxies:
            raise ConfigError(f"no proxy with node id {args.node!r} is connected to {', '.join(servers)}")
        details(proxies, out)
    else:
        table(proxies, out)
    return 1 if failed == len(servers) else 0


def _as_json(p: Proxy) -> dict[str, Any]:
    return {"server": p.server, "node": p.node, "cluster": p.cluster,
            "types": {t: {"state": s.state, "resources": s.resources, "error": s.error, "diff": s.diff}
                      for t, s in sorted(p.types.items())}}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    return asyncio.run(status(args, sys.stdout))
