"""Subscription state shared by the SotW and Delta handlers (sans-IO, no asyncio).

Design follows go-control-plane `pkg/server/stream/v3/subscription.go`: one object per (stream, type) holds what
the client asked for (wildcard and/or explicit names) and what it has been sent (name -> version), so both
protocols answer from the same diff. Rules implemented here (xds_protocol.rst "How the client specifies what
resources to return"):

* SotW wildcard is an explicit "*", or (legacy, LDS/CDS) an empty `resource_names` on a stream that has never
  named a resource; after any explicit name, an empty list means "unsubscribe all" (SotW rule 11).
* Delta wildcard is "*" in `resource_names_subscribe`, or (legacy) a first request with nothing subscribed and
  nothing unsubscribed; subscribing and unsubscribing "*" in one request means "nothing" (Istio on-demand,
  `delta.go` `deltaWatchedResources`) (Delta rule 7).
* Unsubscribing a name never subscribed is a no-op (Delta rule 4).

Memory (docs/performance.md complaint 6): thousands of clients usually subscribe to the same names and hold the same
versions, so both halves of the state are structurally shared. Name sets are immutable and interned (one frozenset
per distinct set, however many clients use it). What a client holds is a shared, interned name -> version map plus
a small private overlay of differences (`SentVersions`), folded back into a shared map when it grows. An idle
client subscribed to 2,000 names then costs a few hundred bytes here instead of ~115 KiB.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from microxds.cache.versions import SetDigest

WILDCARD = "*"
_NO_NAMES: frozenset[str] = frozenset()


class _VersionMap(dict[str, str]):
    """An immutable-by-convention name -> version map that may be shared by many clients (weakly interned)."""

    __slots__ = ("__weakref__",)


_EMPTY_MAP = _VersionMap()
# Interning registries. Keys are content hashes; a hit is confirmed by equality, so a collision only costs sharing.
_NAME_SETS: weakref.WeakValueDictionary[int, frozenset[str]] = weakref.WeakValueDictionary()
_VERSION_MAPS: weakref.WeakValueDictionary[tuple[str, int], _VersionMap] = weakref.WeakValueDictionary()


def intern_names(names: frozenset[str]) -> frozenset[str]:
    """The shared frozenset equal to `names` (registered if it is the first of its kind)."""
    if not names:
        return _NO_NAMES
    key = hash(names)
    shared = _NAME_SETS.get(key)
    if shared is None:
        _NAME_SETS[key] = names
        return names
    return shared if shared == names else names


def _intern_versions(merged: _VersionMap, digest: str) -> _VersionMap:
    key = (digest, len(merged))
    shared = _VERSION_MAPS.get(key)
    if shared is None:
        _VERSION_MAPS[key] = merged
        return merged
    return shared if shared == merged else merged


class SentVersions(Mapping[str, str]):
    """name -> version the client holds: a shared base map plus a private overlay (None = not held).

    `record`/`forget` touch only the overlay (O(1)); `settle()` folds a large overlay into a new base, interned
    by its content digest, so clients that went through the same pushes end up sharing one map again.
    """

    __slots__ = ("_base", "_digest", "_len", "_over")

    def __init__(self) -> None:
        self._base: _VersionMap = _EMPTY_MAP
        self._over: dict[str, str | None] = {}
        self._len = 0
        self._digest = SetDigest()

    def __getitem__(self, name: str) -> str:
        version = self.get(name)
        if version is None:
            raise KeyError(name)
        return version

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        over = self._over
        if over and name in over:
            v = over[name]
            return default if v is None else v
        return self._base.get(name, default)

    def __contains__(self, name: object) -> bool:
        over = self._over
        if over and name in over:
            return over[name] is not None
        return name in self._base

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        over = self._over
        if not over:
            return iter(self._base)
        return self._iter_merged()

    def _iter_merged(self) -> Iterator[str]:
        over = self._over
        yield from (n for n in self._base if n not in over)
        yield from (n for n, v in over.items() if v is not None)

    def record(self, name: str, version: str) -> None:
        old = self.get(name)
        if old == version:
            return
        if old is None:
            self._len += 1
        else:
            self._digest.remove(name, old)
        self._digest.add(name, version)
        if self._base.get(name) == version:
            del self._over[name]
        else:
            self._over[name] = version

    def forget(self, name: str) -> bool:
        old = self.get(name)
        if old is None:
            return False
        self._len -= 1
        self._digest.remove(name, old)
        if name in self._base:
            self._over[name] = None
        else:
            del self._over[name]
        return True

    def clear(self) -> None:
        self._base, self._over, self._len = _EMPTY_MAP, {}, 0
        self._digest.clear()

    def settle(self) -> None:
        """Fold the overlay into a shared base once it outgrows 1/16 of the base (amortised O(1) per change)."""
        if len(self._over) <= 16 + len(self._base) // 16:
            return
        merged = _VersionMap(self._base)
        for name, version in self._over.items():
            if version is None:
                del merged[name]
            else:
                merged[name] = version
        self._base = _intern_versions(merged, self._digest.hexdigest())
        self._over = {}

    def digest(self) -> str:
        return self._digest.hexdigest()


@dataclass(slots=True)
class SubscriptionChange:
    """What one request changed. `requested` are the names the server must answer now (rule 6 / delta rule 3)."""

    requested: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    wildcard_added: bool = False
    wildcard_removed: bool = False

    def __bool__(self) -> bool:
        return bool(self.requested or self.removed or self.wildcard_added or self.wildcard_removed)


class Subscription:
    """One type on one stream: the subscription (`names`, `wildcard`) plus the client's known resources (`sent`)."""

    __slots__ = ("_ever_named", "names", "sent", "wildcard")

    def __init__(self) -> None:
        self.wildcard = False
        self.names: frozenset[str] = _NO_NAMES  # interned: never mutate, replace
        self._ever_named = False
        # What the client was last sent (or, in delta, declared via initial_resource_versions). A NACKed response
        # stays recorded, so the same rejected content is never sent again (go #564, istio #21111).
        self.sent = SentVersions()

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names

    # -- requests -------------------------------------------------------------------------------------------

    def apply_sotw(self, names: Iterable[str], *, legacy_wildcard: bool) -> SubscriptionChange:
        """Replace the subscription with a SotW `resource_names` list (each request is the full list)."""
        requested = frozenset(names)
        if not requested and not self._ever_named and legacy_wildcard:
            wildcard, explicit = True, _NO_NAMES
        else:
            self._ever_named = self._ever_named or bool(requested)
            wildcard = WILDCARD in requested
            explicit = requested - {WILDCARD} if wildcard else requested
        change = SubscriptionChange(
            requested=set(explicit - self.names),
            removed=set(self.names - explicit),
            wildcard_added=wildcard and not self.wildcard,
            wildcard_removed=self.wildcard and not wildcard,
        )
        self.wildcard = wildcard
        if explicit != self.names:
            self.names = intern_names(explicit)
        return change

    def apply_delta(self, subscribe: Iterable[str], unsubscribe: Iterable[str], *, first: bool) -> SubscriptionChange:
        """Apply a delta request's subscribe/unsubscribe lists (subscribe first, then unsubscribe)."""
        sub, unsub = set(subscribe), set(unsubscribe)
        was_wildcard = self.wildcard
        if first and not sub and not unsub:
            self.wildcard = True  # legacy wildcard (delta rule 7)
        if WILDCARD in sub:
            self.wildcard = True
        if WILDCARD in unsub:
            self.wildcard = False
        sub.discard(WILDCARD)
        unsub.discard(WILDCARD)
        names = self.names
        removed = unsub & names  # unknown names: no-op (delta rule 4)
        if removed or not sub <= names:
            # O(subscribed) per changing request: the price of an immutable, shareable set.
            self.names = intern_names((names | sub) - unsub)
        return SubscriptionChange(
            requested=sub - unsub,
            removed=removed,
            wildcard_added=self.wildcard and not was_wildcard,
            wildcard_removed=was_wildcard and not self.wildcard,
        )

    # -- what the client holds ----------------------------------------------------------------------------

    def record(self, name: str, version: str) -> None:
        self.sent.record(name, version)

    def forget(self, name: str) -> bool:
        return self.sent.forget(name)

    def replace_sent(self, pairs: Mapping[str, str]) -> None:
        self.sent.clear()
        for name, version in pairs.items():
            self.sent.record(name, version)
        self.sent.settle()

    def settle(self) -> None:
        """Call after a batch of `record`/`forget` (one response): lets clients share what they hold again."""
        self.sent.settle()

    def version(self) -> str:
        """SotW `version_info`: a digest of exactly what the client holds, equal on every replica."""
        return self.sent.digest()
