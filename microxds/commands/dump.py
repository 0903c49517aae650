"""`microxds dump`: subscribe to one xDS type on any ADS server (ours, Envoy-style, istiod-style) and print it.

It ACKs every response and never NACKs (it is a debugging tool, not a validator), so it does not disturb the
server's view of a healthy client. SotW by default, `--delta` for incremental xDS. LDS/CDS are requested as a
(legacy) wildcard, other types as "*" unless `--names` are given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import Message

from hbone.configtext import DURATION
from hbone.errors import GrpcError
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from hbone.identity import IdentityManager, load_bundle
from hbone.tls import MeshTls
from microxds.commands.dumpview import Entry, WatchState, readable_ips, table
from microxds.errors import ConfigError
from microxds.protoreg import message_class
from microxds.resources import ADDRESS, CLUSTER, LISTENER, PREFIX, resolve_type, resource_name

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
_WRAPPER = PREFIX + "envoy.service.discovery.v3.Resource"
_MISSING = re.compile(r"type_url:? ?(\S+)")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "dump", help="print the resources an ADS server sends", description=__doc__.split("\n\n", 1)[0]
    )
    p.add_argument("--server", required=True, metavar="ADDR", help="HOST:PORT of the ADS server")
    sec = p.add_mutually_exclusive_group()
    sec.add_argument("--plaintext", action="store_true", help="h2c, no TLS (the default without --certs/--ca)")
    sec.add_argument("--certs", type=Path, metavar="DIR", help="mesh mTLS with this identity (cert-chain/key/root)")
    sec.add_argument("--ca", type=Path, metavar="FILE", help="server-auth TLS, trusting this CA bundle")
    p.add_argument(
        "--expect-identity", action="append", default=[], metavar="SPIFFE_ID",
        help="with --certs: the server's SPIFFE id (repeatable; default istiod's in our trust domain)",
    )  # fmt: skip
    p.add_argument(
        "--type", required=True, metavar="TYPE",
        help="cds|lds|rds|eds|sds|address|workload|service|authorization|URL (workload, service: those Addresses)",
    )  # fmt: skip
    p.add_argument("--delta", action="store_true", help="use DeltaAggregatedResources")
    p.add_argument("--node-id", default="microxds-dump", metavar="ID")
    p.add_argument("--node-cluster", default="", metavar="CLUSTER")
    p.add_argument("--node-meta", action="append", default=[], metavar="K=V", help="node metadata (repeatable)")
    p.add_argument("--names", nargs="*", default=[], metavar="NAME", help="resource names (default: all)")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="send `authorization: Bearer <file content>`")
    p.add_argument("--watch", action="store_true", help="keep printing what each response changes until interrupted")
    p.add_argument("--summary", action="store_true", help="one table row per resource: type, name, version, detail")
    p.add_argument("--raw", action="store_true", help="Istio IPs as protobuf JSON bytes (base64), to paste back")
    p.add_argument("--count", type=int, default=0, metavar="N", help="with --watch: stop after N responses")
    p.add_argument("--json", action="store_true", help="one JSON object per response")
    p.add_argument("--timeout", type=DURATION, default=10.0, metavar="S", help="wait for the first response (10)")
    p.set_defaults(func=run)


def channel_for(args: argparse.Namespace) -> Channel:
    metadata: list[tuple[str, str | bytes]] = []
    if args.token_file is not None:
        metadata.append(("authorization", "Bearer " + args.token_file.read_text().strip()))
    if args.certs is not None:
        tls = MeshTls(IdentityManager.fixed(load_bundle(args.certs)))
        expected = args.expect_identity or [f"spiffe://{tls.trust_domain}/ns/istio-system/sa/istiod"]
        return Channel(
            args.server, tls=tls, expected_identities=expected, metadata=metadata, max_receive_message_size=256 << 20
        )
    if args.ca is not None:
        ctx = ssl.create_default_context(cafile=str(args.ca))
        ctx.set_alpn_protocols(["h2"])
        return Channel(args.server, ssl=ctx, metadata=metadata, max_receive_message_size=256 << 20)
    return Channel(args.server, metadata=metadata, max_receive_message_size=256 << 20)


def build_node(args: argparse.Namespace) -> base_pb2.Node:
    node = base_pb2.Node(id=args.node_id, cluster=args.node_cluster, user_agent_name="microxds-dump")
    for item in args.node_meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--node-meta {item!r}: use KEY=VALUE")
        node.metadata.fields[key].CopyFrom(struct_pb2.Value(string_value=value))
    return node


def to_dict(message: Message) -> dict[str, Any]:
    """json_format with the proto field names (so output can be pasted back into a config file); nested Any
    types are imported on demand, as the config loader does."""
    for _ in range(64):
        try:
            return _plain(json_format.MessageToDict(message, preserving_proto_field_name=True))
        except (TypeError, KeyError) as exc:
            m = _MISSING.search(str(exc))
            if m is None:
                raise
            message_class(m.group(1).removeprefix(PREFIX))
    return _plain(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _plain(value: Any) -> dict[str, Any]:
    # json_format returns OrderedDicts for Any fields, which yaml.safe_dump refuses; JSON types are plain.
    result: dict[str, Any] = json.loads(json.dumps(value))
    return result


def decode(packed: any_pb2.Any) -> tuple[str, str | None, dict[str, Any]]:
    """(name, version or None, fields with @type) of one resource, unwrapping a SotW `Resource` wrapper."""
    version = None
    if packed.type_url == _WRAPPER:
        wrapper = discovery_pb2.Resource.FromString(packed.value)
        packed, version = wrapper.resource, wrapper.version
    cls = message_class(packed.type_url.removeprefix(PREFIX))
    message = cls.FromString(packed.value)
    try:
        name = resource_name(message, packed.type_url)
    except ValueError:
        name = "?"
    return name, version, {"@type": packed.type_url, **to_dict(message)}


def entries_of(resp: Any, delta: bool, *, raw: bool = False) -> list[Entry]:
    """The response's resources as (name, version, fields); Istio IPs as text unless `raw`."""
    out: list[Entry] = []
    if delta:
        for r in resp.resources:
            fields = decode(r.resource)[2] if r.HasField("resource") else None  # None: heartbeat / alias-only
            out.append(Entry(r.name, r.version, fields))
    else:
        for packed in resp.resources:
            name, version, fields = decode(packed)
            out.append(Entry(name, version, fields))
    if not raw:
        out = [Entry(e.name, e.version, readable_ips(e.fields)) if _istio(e) else e for e in out]
    return out


def _istio(entry: Entry) -> bool:
    return entry.fields is not None and str(entry.fields.get("@type", "")).startswith(PREFIX + "istio.")


def render(
    resp: Any, delta: bool, as_json: bool, out: TextIO, *, view: View | None = None, state: WatchState | None = None
) -> None:
    view = view or View()
    entries = [e for e in entries_of(resp, delta, raw=view.raw) if view.keep(e)]
    head: dict[str, Any] = {"type_url": resp.type_url, "nonce": resp.nonce}
    head["system_version_info" if delta else "version_info"] = resp.system_version_info if delta else resp.version_info
    if delta:
        head["removed_resources"] = list(resp.removed_resources)
    removed: list[str] = list(head.get("removed_resources", []))
    if state is not None:  # --watch: after the first response, show only what changed
        first = state.first
        added, changed, removed = state.apply(entries, removed, full_state=not delta)
        if not first:
            head["changes"] = {"added": [e.name for e in added], "changed": [e.name for e in changed],
                               "removed": removed}  # fmt: skip
            entries = added + changed
    if as_json:
        resources = [
            {"name": e.name, **({"version": e.version} if e.version else {}),
             **({"resource": dict(e.fields)} if e.fields is not None else {})}
            for e in entries
        ]  # fmt: skip
        out.write(json.dumps({**head, "resources": resources}, sort_keys=False) + "\n")
        out.flush()
        return
    kind = resp.type_url.rsplit(".", 1)[-1]
    version = head.get("version_info", head.get("system_version_info"))
    if "changes" in head:
        ch = head["changes"]
        out.write(f"# {kind}: +{len(ch['added'])} ~{len(ch['changed'])} -{len(ch['removed'])}, version {version!r}\n")
        for name in ch["added"]:
            out.write(f"# added: {name}\n")
        for name in ch["changed"]:
            out.write(f"# changed: {name}\n")
    else:
        out.write(f"# {kind}: {len(entries)} resources, version {version!r}, nonce {resp.nonce!r}\n")
    for name in removed:
        out.write(f"# removed: {name}\n")
    if view.summary:
        if entries:
            out.write(table(entries) + "\n")
    else:
        for e in entries:
            out.write(f"--- # {e.name}" + (f" (version {e.version})" if e.version else "") + "\n")
            if e.fields is not None:
                out.write(yaml.safe_dump(dict(e.fields), sort_keys=False))
    out.flush()


@dataclass(frozen=True)
class View:
    """How to show resources: a table, raw protobuf JSON, or only one kind of Address."""

    summary: bool = False
    raw: bool = False
    address_kind: str | None = None  # "workload" | "service": `--type workload|service` are Address subsets

    def keep(self, entry: Entry) -> bool:
        return self.address_kind is None or (entry.fields is not None and self.address_kind in entry.fields)


async def dump(args: argparse.Namespace, out: TextIO) -> int:
    address_kind = args.type if args.type in ("workload", "service") else None
    try:
        type_url = ADDRESS if address_kind else resolve_type(args.type)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    view = View(summary=args.summary, raw=args.raw, address_kind=address_kind)
    state = WatchState() if args.watch else None
    names = list(args.names)
    if not names and type_url not in (CLUSTER, LISTENER):
        names = ["*"]  # non-LDS/CDS types have no legacy wildcard
    node = build_node(args)
    if args.delta:
        method, req_t, resp_t = (
            "DeltaAggregatedResources",
            discovery_pb2.DeltaDiscoveryRequest,
            discovery_pb2.DeltaDiscoveryResponse,
        )
        first: Message = req_t(node=node, type_url=type_url, resource_names_subscribe=names)
    else:
        method, req_t, resp_t = (
            "StreamAggregatedResources",
            discovery_pb2.DiscoveryRequest,
            discovery_pb2.DiscoveryResponse,
        )
        first = req_t(node=node, type_url=type_url, resource_names=names)
    seen = 0
    async with channel_for(args) as channel:
        call = channel.stream(ADS + method, request_codec=ProtoCodec(req_t), response_codec=ProtoCodec(resp_t))
        async with call:
            await call.send(first)
            while True:
                timeout = args.timeout if seen == 0 else None
                resp = await asyncio.wait_for(call.recv(), timeout)
                if resp is None:
                    print("microxds: the server ended the stream", file=sys.stderr)
                    return 1
                if resp.type_url != type_url:
                    continue  # an ADS server may push other types on the stream; we asked for one
                seen += 1
                render(resp, args.delta, args.json, out, view=view, state=state)
                if args.delta:
                    await call.send(req_t(type_url=type_url, response_nonce=resp.nonce))
                else:
                    ack = req_t(type_url=type_url, version_info=resp.version_info, response_nonce=resp.nonce)
                    ack.resource_names.extend(names)
                    await call.send(ack)
                if not args.watch or (args.count and seen >= args.count):
                    call.cancel()
                    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(dump(args, sys.stdout))
    except TimeoutError:
        print(f"microxds: no {args.type} response within {args.timeout}s", file=sys.stderr)
        return 1
    except GrpcError as exc:
        print(f"microxds: {exc}", file=sys.stderr)
        return 1
