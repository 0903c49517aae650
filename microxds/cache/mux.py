"""Route each type to its own cache: per-group snapshots for config, `LinearCache` for endpoints/workloads.

Like go-control-plane's `MuxCache`, but a stream opens one combined watch, so handlers stay unaware of the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from envoy.config.core.v3 import base_pb2

from microxds.cache.types import Cache, CacheWatch, ChangeCallback, Changes
from microxds.resources import Resource


class _MuxWatch:
    __slots__ = ("_default", "_routed")

    def __init__(self, default: CacheWatch, routed: dict[str, CacheWatch]) -> None:
        self._default = default
        self._routed = routed

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._routed.get(type_url, self._default).resources(type_url)

    def aliases(self, type_url: str) -> Mapping[str, str]:
        return self._routed.get(type_url, self._default).aliases(type_url)

    def close(self) -> None:
        self._default.close()
        for w in self._routed.values():
            w.close()


class MuxCache:
    """`routes` maps a type URL to the cache that owns it; every other type comes from `default`."""

    def __init__(self, default: Cache, routes: Mapping[str, Cache]) -> None:
        self.default = default
        self.routes = MappingProxyType(dict(routes))

    def watch(self, node: base_pb2.Node, on_change: ChangeCallback) -> _MuxWatch:
        routed_types = frozenset(self.routes)

        def default_changed(changes: Changes) -> None:
            # The default cache must not shadow types owned by another cache.
            kept = {t: n for t, n in changes.items() if t not in routed_types}
            if kept:
                on_change(kept)

        def routed_changed(type_url: str) -> ChangeCallback:
            def forward(changes: Changes) -> None:
                names = changes.get(type_url)
                if names:
                    on_change({type_url: names})

            return forward

        routed = {t: c.watch(node, routed_changed(t)) for t, c in self.routes.items()}
        return _MuxWatch(self.default.watch(node, default_changed), routed)
