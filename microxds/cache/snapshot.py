"""Per-group snapshot cache (go-control-plane `pkg/cache/v3/simple.go`, redesigned for push-based handlers).

A `Snapshot` is an immutable mapping type_url -> {name: Resource}. `SnapshotCache.set_snapshot(group, snap)` diffs
the new snapshot against the group's previous one once (O(resources) per update per group, never per client) and
tells every watcher of the group which names changed per type. Handlers never wait on the cache: unlike
go-control-plane's ADS mode there is no "hold until every name is requested" (go-control-plane #349, #426), which
breaks gRPC clients that name LDS/CDS one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from envoy.config.core.v3 import base_pb2

from microxds.cache.consistency import Problem, find_problems
from microxds.cache.types import ChangeCallback, Changes, NodeHash, node_id_hash
from microxds.resources import Resource

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Resource] = MappingProxyType({})
_NO_ALIASES: Mapping[str, str] = MappingProxyType({})


class Snapshot(Mapping[str, Mapping[str, Resource]]):
    """An immutable set of resources per type. Build from a mapping or with `Snapshot.of(resources)`."""

    __slots__ = ("_aliases", "_by_type")

    def __init__(self, resources: Mapping[str, Mapping[str, Resource]] | None = None) -> None:
        by_type: dict[str, Mapping[str, Resource]] = {}
        for type_url, named in (resources or {}).items():
            for name, res in named.items():
                if res.name != name or res.type_url != type_url:
                    raise ValueError(f"snapshot key {type_url} {name!r} does not match resource {res.name!r}")
            if named:
                by_type[type_url] = MappingProxyType(dict(named))
        self._by_type = by_type
        self._aliases: dict[str, Mapping[str, str]] = {}

    @classmethod
    def of(cls, resources: Iterable[Resource]) -> Snapshot:
        grouped: dict[str, dict[str, Resource]] = {}
        for res in resources:
            named = grouped.setdefault(res.type_url, {})
            if res.name in named:
                raise ValueError(f"duplicate {res.type_url} resource {res.name!r}")
            named[res.name] = res
        return cls(grouped)

    def __getitem__(self, type_url: str) -> Mapping[str, Resource]:
        return self._by_type.get(type_url, _EMPTY)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_type)

    def __len__(self) -> int:
        return len(self._by_type)

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._by_type.get(type_url, _EMPTY)

    def aliases(self, type_url: str) -> Mapping[str, str]:
        """alias -> name for one type, built on first use (most types have no aliases)."""
        index = self._aliases.get(type_url)
        if index is None:
            built = {a: r.name for r in self.resources(type_url).values() for a in r.aliases}
            index = MappingProxyType(built) if built else _NO_ALIASES
            self._aliases[type_url] = index
        return index

    def diff(self, other: Snapshot | None) -> dict[str, frozenset[str]]:
        """Names per type that differ (added, removed or new version) between `other` and this snapshot."""
        out: dict[str, frozenset[str]] = {}
        old_types = other._by_type if other is not None else {}
        for type_url in set(self._by_type) | set(old_types):
            new = self._by_type.get(type_url, _EMPTY)
            old = old_types.get(type_url, _EMPTY)
            if new is old:
                continue
            changed = {n for n, r in new.items() if (o := old.get(n)) is None or o.version != r.version}
            changed.update(n for n in old if n not in new)
            if changed:
                out[type_url] = frozenset(changed)
        return out

    def consistency_problems(self) -> list[Problem]:
        """Dangling references listener -> route -> cluster -> endpoints (go-control-plane `Consistent()`).

        Only a warning: a client may still be served a partial config, and another source may fill the gap.
        """
        return find_problems(self)


class _SnapshotWatch:
    __slots__ = ("_cache", "group", "on_change")

    def __init__(self, cache: SnapshotCache, group: str, on_change: ChangeCallback) -> None:
        self._cache = cache
        self.group = group
        self.on_change = on_change

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        return self._cache.snapshot_for(self.group).resources(type_url)

    def aliases(self, type_url: str) -> Mapping[str, str]:
        return self._cache.snapshot_for(self.group).aliases(type_url)

    def close(self) -> None:
        self._cache._unwatch(self)


class SnapshotCache:
    """Snapshots per node group, with a default for groups that have none.

    `node_hash` picks the group (node id by default; see `types.MetadataHash`). With `check_consistency`,
    every `set_snapshot` logs dangling references as warnings; it never rejects the snapshot.
    """

    def __init__(
        self,
        node_hash: NodeHash = node_id_hash,
        *,
        default: Snapshot | None = None,
        check_consistency: bool = True,
    ) -> None:
        self.node_hash = node_hash
        self.check_consistency = check_consistency
        self._default = default or Snapshot()
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, set[_SnapshotWatch]] = {}

    def snapshot_for(self, group: str) -> Snapshot:
        return self._snapshots.get(group, self._default)

    def groups(self) -> list[str]:
        return list(self._snapshots)

    def watched_groups(self) -> dict[str, int]:
        """group -> number of open watches (go-control-plane `GetStatusKeys`/`GetStatusInfo`)."""
        return {g: len(w) for g, w in self._watches.items()}

    def watch(self, node: base_pb2.Node, on_change: ChangeCallback) -> _SnapshotWatch:
        w = _SnapshotWatch(self, self.node_hash(node), on_change)
        self._watches.setdefault(w.group, set()).add(w)
        return w

    def _unwatch(self, w: _SnapshotWatch) -> None:
        watchers = self._watches.get(w.group)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._watches[w.group]

    def set_snapshot(self, group: str, snapshot: Snapshot) -> Changes:
        """Install `snapshot` for `group`; returns (and notifies watchers of) the names that changed per type."""
        if self.check_consistency:
            self._warn(group, snapshot)
        previous = self.snapshot_for(group)
        self._snapshots[group] = snapshot
        changes = snapshot.diff(previous)
        if changes:
            self._notify(group, changes)
        return changes

    def clear_snapshot(self, group: str) -> Changes:
        """Drop a group's snapshot; its watchers fall back to the default snapshot."""
        previous = self._snapshots.pop(group, None)
        if previous is None:
            return {}
        changes = self._default.diff(previous)
        if changes:
            self._notify(group, changes)
        return changes

    def set_default(self, snapshot: Snapshot) -> None:
        """Replace the default snapshot; watchers of groups without their own snapshot are notified."""
        previous, self._default = self._default, snapshot
        changes = snapshot.diff(previous)
        if not changes:
            return
        for group in list(self._watches):
            if group not in self._snapshots:
                self._notify(group, changes)

    def _notify(self, group: str, changes: Changes) -> None:
        for w in list(self._watches.get(group, ())):
            w.on_change(changes)

    @staticmethod
    def _warn(group: str, snapshot: Snapshot) -> None:
        for problem in snapshot.consistency_problems():
            log.warning("snapshot for group %r is inconsistent: %s", group, problem)
