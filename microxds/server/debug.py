"""`/debug/syncz`, `/debug/config_dump?node=ID` and the live `/debug/status` page (istiod's debug endpoints).

Everything is read from the `StatusRegistry` on each request: one row per connected stream (node id, node group,
SotW/Delta, address, identity, connected since) and per type the ACKed and sent versions, istioctl's state word,
the resources whose current version differs from what the proxy holds, a NACK with its error detail, and the time
since the last push. The page polls `/debug/syncz` once a second, so it changes without a reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from hbone.admin.http import Query, Response
from microxds.server.status import ClientStatus, StatusRegistry


class DebugViews:
    def __init__(self, registry: StatusRegistry, group_of: Callable[[base_pb2.Node], str]) -> None:
        self.registry = registry
        self.group_of = group_of

    def row(self, client: ClientStatus, now: float) -> dict[str, Any]:
        node = client.node
        types = {}
        for type_url, st in sorted(client.types.items()):
            pending = client.pending(type_url)
            types[type_url] = {
                "state": client.state(type_url),
                "acked_version": st.acked_version or None,
                "sent_version": st.sent_version or None,
                "resources": len(st.subscription.sent),
                "pending": sorted(pending),
                "nack": None if not st.nacked or st.nack is None else {
                    "version": st.nack.version, "error": st.nack.message, "seconds_ago": round(now - st.nack.at, 1)},
                "since_last_push_seconds": round(now - st.sent_at, 1) if st.sent_at else None,
                "pushes": st.sent_count, "acks": st.ack_count, "nacks": st.nack_count,
            }  # fmt: skip
        return {
            "stream": client.stream_id,
            "node": node.id if node is not None else None,
            "cluster": node.cluster if node is not None else None,
            "group": self.group_of(node) if node is not None else None,
            "protocol": "Delta" if client.protocol == "delta" else "SotW",
            "address": client.address or client.peer,
            "identity": client.identity,
            "connected_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(client.connected_at)),
            "connected_seconds": round(now - client.connected_at, 1),
            "types": types,
        }

    def syncz(self, _q: Query) -> Response:
        now = time.time()
        rows = [self.row(c, now) for c in self.registry.clients() if c.node is not None]
        rows.sort(key=lambda r: (r["node"] or "", r["stream"]))
        return Response.json(rows)

    def config_dump(self, q: Query) -> Response:
        node_id = q.args.get("node")
        if not node_id:
            return Response.text("give ?node=ID (see /debug/syncz for the connected node ids)\n", 400)
        resp = self.registry.client_status_response(lambda n: n.id == node_id, include_resources=True)
        if not resp.config:
            return Response.text(f"no connected proxy with node id {node_id!r}\n", 404)
        return Response.json(json_format.MessageToDict(resp, preserving_proto_field_name=True))

    def status_page(self, _q: Query) -> Response:
        page = resources.files("microxds.server").joinpath("status.html").read_bytes()
        return Response(200, page, "text/html; charset=utf-8")
