"""What the SotW and Delta stream handlers share: the node and cache watch, per-type subscriptions, pending changes.

A stream opens its cache watch on the first request (whose node is kept: only the first request is guaranteed to
carry it, xds_protocol "node"), validates each request's type URL against the stream kind, and accumulates the
names the cache reports as changed until `flush()` turns them into responses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from envoy.config.core.v3 import base_pb2

from microxds.cache.types import Cache, CacheWatch, Changes
from microxds.errors import ProtocolError
from microxds.resources import Resource
from microxds.server.heartbeat import Heartbeats
from microxds.server.status import ClientStatus, StatusRegistry
from microxds.server.subscription import Subscription


class StreamCore:
    """Base of `SotwStream` and `DeltaStream`; `kind` is "sotw" or "delta"."""

    kind = ""

    def __init__(self, cache: Cache, *, registry: StatusRegistry | None, peer: str, type_url: str | None) -> None:
        self._cache = cache
        self._registry = registry
        self.status: ClientStatus = (
            registry.open(peer, self.kind) if registry is not None else ClientStatus(0, peer, self.kind, None)
        )
        self.type_url = type_url
        self.node: base_pb2.Node | None = None
        self._watch: CacheWatch | None = None
        self._subs: dict[str, Subscription] = {}
        self._pending: dict[str, frozenset[str]] = {}
        self._nonce = 0
        self.on_dirty: Callable[[], None] | None = None
        self.closed = False
        #: Set by the service: where this stream registers once it holds TTL'd resources.
        self.heartbeats: Heartbeats | None = None
        self._ttl_types: set[str] = set()
        self._heartbeat_due = False

    def _begin(self, req: Any) -> tuple[CacheWatch, str, Subscription, bool]:
        """Checks every (Delta)DiscoveryRequest needs; returns the watch, type URL, its subscription, and whether
        this is the type's first request on the stream."""
        if self.closed:
            raise ProtocolError("request on a closed stream")
        watch = self._watch or self._open(req.node if req.HasField("node") else None)
        type_url = req.type_url or self.type_url
        if not type_url:
            raise ProtocolError(f"{type(req).__name__} without type_url on an aggregated stream")
        if self.type_url is not None and type_url != self.type_url:
            raise ProtocolError(f"{type_url} requested on a {self.type_url} stream")
        sub = self._subs.get(type_url)
        first = sub is None
        if sub is None:
            sub = self._subs[type_url] = Subscription()
            self.status.track(type_url, sub)
        return watch, type_url, sub, first

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self._watch.close()
        if self._registry is not None:
            self._registry.close(self.status)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    # -- TTL heartbeats -------------------------------------------------------------------------------------------

    def _sent_ttl(self, type_url: str, resources: Iterable[Resource]) -> None:
        """Note a type whose resources carry a TTL, so heartbeats keep them alive on the client."""
        if type_url not in self._ttl_types and any(r.ttl is not None for r in resources):
            self._ttl_types.add(type_url)
            if self.heartbeats is not None:
                self.heartbeats.add(self)

    def request_heartbeat(self) -> None:
        if self._ttl_types and not self.closed:
            self._heartbeat_due = True
            if self.on_dirty is not None:
                self.on_dirty()

    def _due_heartbeats(self) -> Iterator[tuple[str, Subscription, list[Resource]]]:
        """(type, subscription, TTL'd resources the client holds at their current version), once per request."""
        if not self._heartbeat_due or self._watch is None:
            return
        self._heartbeat_due = False
        for type_url in sorted(self._ttl_types):
            sub = self._subs.get(type_url)
            if sub is None:
                continue
            view = self._watch.resources(type_url)
            beats = [
                r
                for n, v in sub.sent.items()
                if (r := view.get(n)) is not None and r.ttl is not None and r.version == v
            ]
            if beats:
                yield type_url, sub, beats

    def _open(self, first_node: base_pb2.Node | None) -> CacheWatch:
        node = base_pb2.Node()
        if first_node is not None:
            node.CopyFrom(first_node)
        self.node = self.status.node = node
        self._watch = self.status.watch = self._cache.watch(node, self._on_change)
        self.status.connected()
        return self._watch

    def _on_change(self, changes: Changes) -> None:
        for type_url, names in changes.items():
            if type_url not in self._subs:
                continue  # never requested: the first request will read the current state
            current = self._pending.get(type_url)
            self._pending[type_url] = names if current is None else current | names
            self.status.changed(type_url)
        if self._pending and self.on_dirty is not None:
            self.on_dirty()
