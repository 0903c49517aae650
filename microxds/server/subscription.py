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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from microxds.cache.versions import SetDigest

WILDCARD = "*"


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
    """One type on one stream: the subscription plus the client's known resources (`sent`)."""

    __slots__ = ("_digest", "_ever_named", "names", "sent", "wildcard")

    def __init__(self) -> None:
        self.wildcard = False
        self.names: set[str] = set()
        self._ever_named = False
        # name -> version the client was last sent (or, in delta, declared via initial_resource_versions).
        # A NACKed response stays recorded, so the same rejected content is never sent again (go #564, istio #21111).
        self.sent: dict[str, str] = {}
        self._digest = SetDigest()

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names

    # -- requests -------------------------------------------------------------------------------------------

    def apply_sotw(self, names: Iterable[str], *, legacy_wildcard: bool) -> SubscriptionChange:
        """Replace the subscription with a SotW `resource_names` list (each request is the full list)."""
        requested = set(names)
        if not requested and not self._ever_named and legacy_wildcard:
            wildcard, explicit = True, set[str]()
        else:
            self._ever_named = self._ever_named or bool(requested)
            wildcard = WILDCARD in requested
            explicit = requested - {WILDCARD}
        change = SubscriptionChange(
            requested=explicit - self.names,
            removed=self.names - explicit,
            wildcard_added=wildcard and not self.wildcard,
            wildcard_removed=self.wildcard and not wildcard,
        )
        self.wildcard, self.names = wildcard, explicit
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
        removed = unsub & self.names  # unknown names: no-op (delta rule 4)
        self.names |= sub
        self.names -= unsub
        return SubscriptionChange(
            requested=sub - unsub,
            removed=removed,
            wildcard_added=self.wildcard and not was_wildcard,
            wildcard_removed=was_wildcard and not self.wildcard,
        )

    # -- what the client holds ----------------------------------------------------------------------------

    def record(self, name: str, version: str) -> None:
        old = self.sent.get(name)
        if old == version:
            return
        if old is not None:
            self._digest.remove(name, old)
        self.sent[name] = version
        self._digest.add(name, version)

    def forget(self, name: str) -> bool:
        old = self.sent.pop(name, None)
        if old is None:
            return False
        self._digest.remove(name, old)
        return True

    def replace_sent(self, pairs: Mapping[str, str]) -> None:
        self.sent = {}
        self._digest.clear()
        for name, version in pairs.items():
            self.record(name, version)

    def version(self) -> str:
        """SotW `version_info`: a digest of exactly what the client holds, equal on every replica."""
        return self._digest.hexdigest()
