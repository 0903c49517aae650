"""The contract between caches and stream handlers, plus node grouping.

A cache knows nothing of transport (DESIGN §5.6, go-control-plane `pkg/cache/v3/cache.go`). A stream handler opens a
`CacheWatch` for its node once, reads the current resources of any type through it, and is told which names changed
per type. Handlers compute their own minimal pushes from those names, so a one-endpoint change costs each client
O(1), not O(total resources).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from envoy.config.core.v3 import base_pb2

from microxds.resources import Resource

# type_url -> names that were added, changed or removed. The frozensets are shared between watchers: never mutate.
Changes = Mapping[str, frozenset[str]]
ChangeCallback = Callable[[Changes], None]
Node = base_pb2.Node
# NodeHash maps a node to the key of the group whose snapshot it receives (go-control-plane `NodeHash`).
NodeHash = Callable[[base_pb2.Node], str]


class CacheWatch(Protocol):
    """One stream's handle on a cache: live reads plus change notification until `close()`."""

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        """The current resources of one type for this node, keyed by name (do not mutate)."""
        ...

    def aliases(self, type_url: str) -> Mapping[str, str]:
        """alias -> canonical name, for on-demand lookups by alias (delta `Resource.aliases`)."""
        ...

    def close(self) -> None: ...


class Cache(Protocol):
    """Anything a stream handler can watch: `SnapshotCache`, `LinearCache`, `MuxCache`."""

    def watch(self, node: base_pb2.Node, on_change: ChangeCallback) -> CacheWatch: ...


def node_id_hash(node: base_pb2.Node) -> str:
    """One group per node id (go-control-plane `IDHash`)."""
    return str(node.id)


def node_cluster_hash(node: base_pb2.Node) -> str:
    """One group per `node.cluster` (service cluster), as java-control-plane's NodeGroup examples do."""
    return str(node.cluster)


class MetadataHash:
    """Group by chosen `node.metadata` fields (e.g. Istio's NAMESPACE, CLUSTER_ID), joined with '/'.

    Missing fields hash as empty strings so such nodes still share a group.
    """

    __slots__ = ("fields",)

    def __init__(self, *fields: str) -> None:
        if not fields:
            raise ValueError("MetadataHash needs at least one metadata field name")
        self.fields = fields

    def __call__(self, node: base_pb2.Node) -> str:
        values = node.metadata.fields
        parts: list[str] = []
        for name in self.fields:
            value = values.get(name)
            parts.append("" if value is None else _scalar(value))
        return "/".join(parts)


def _scalar(value: object) -> str:
    kind = value.WhichOneof("kind")  # type: ignore[attr-defined]
    if kind == "string_value":
        return str(value.string_value)  # type: ignore[attr-defined]
    if kind == "number_value":
        return repr(value.number_value)  # type: ignore[attr-defined]
    if kind == "bool_value":
        return "true" if value.bool_value else "false"  # type: ignore[attr-defined]
    return ""
