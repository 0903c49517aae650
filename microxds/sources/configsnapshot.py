"""ConfigSnapshot: one complete, validated configuration as a value.

A config source produces a new ConfigSnapshot for every valid change and never mutates an old one; the cache and
the servers read it without locks. Resources are the serialise-once values from `microxds.resources`, so the same
bytes and versions go to every client. Node groups let one config give different resources to different nodes:
`for_group(g)` is the full view for group g (the resources for every node, with the group's own resources added
and replacing any of the same type and name); an unknown or absent group gets the common resources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..resources import Resource

TypeMap = Mapping[str, Mapping[str, Resource]]  # type_url -> name -> Resource


def freeze(types: Mapping[str, Mapping[str, Resource]]) -> TypeMap:
    """Read-only views, sorted by name so iteration (and therefore responses) are deterministic."""
    return MappingProxyType(
        {t: MappingProxyType(dict(sorted(by_name.items()))) for t, by_name in sorted(types.items()) if by_name}
    )


def _digest(lines: Iterator[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    resources: TypeMap
    """The resources every node gets: type_url -> name -> Resource."""
    groups: Mapping[str, TypeMap] = field(default_factory=lambda: MappingProxyType({}))
    """Full view per node group (common resources merged with the group's own)."""
    origins: Mapping[tuple[str, str, str], str] = field(default_factory=lambda: MappingProxyType({}))
    """(group or "", type_url, name) -> "file:line" where the resource was defined (for errors and NACK reports)."""
    warnings: tuple[str, ...] = ()
    """Accepted-with-warning conditions, as `file:line: text` (e.g. HTTP attributes in an ambient policy)."""
    files: tuple[str, ...] = ()
    """The files this snapshot was loaded from, in load order."""
    version: str = ""
    """A content hash over every resource version in every group; equal configs give equal versions."""

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self._compute_version())

    def _compute_version(self) -> str:
        def lines() -> Iterator[str]:
            for group, view in [("", self.resources), *sorted(self.groups.items())]:
                for type_url, by_name in sorted(view.items()):
                    for name, res in sorted(by_name.items()):
                        yield f"{group}\t{type_url}\t{name}\t{res.version}"

        return _digest(lines())

    @classmethod
    def empty(cls) -> ConfigSnapshot:
        return cls(freeze({}))

    def for_group(self, group: str | None = None) -> TypeMap:
        """What a node in `group` gets (the common resources when the group is None or not configured)."""
        if group is not None:
            view = self.groups.get(group)
            if view is not None:
                return view
        return self.resources

    def type_version(self, type_url: str, group: str | None = None) -> str:
        """A content hash of one type's resources in one view (a SotW `version_info`)."""
        by_name = self.for_group(group).get(type_url, {})
        return _digest(f"{name}\t{res.version}" for name, res in sorted(by_name.items()))

    def get(self, type_url: str, name: str, group: str | None = None) -> Resource | None:
        return self.for_group(group).get(type_url, {}).get(name)

    def origin(self, type_url: str, name: str, group: str | None = None) -> str | None:
        """Where a resource was defined, as `file:line`."""
        if group:
            found = self.origins.get((group, type_url, name))
            if found is not None:
                return found
        return self.origins.get(("", type_url, name))

    def count(self, group: str | None = None) -> int:
        return sum(len(by_name) for by_name in self.for_group(group).values())
