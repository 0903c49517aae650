"""The mesh state store: workloads, services and policies; atomic updates; immutable snapshots; notifications.

Readers take `state.snapshot()` (O(1): a reference to the current immutable `MeshSnapshot`) and never see half an
update. Writers call `apply(delta)`: every item is validated first; bad items are rejected one by one while the
good ones apply (xDS semantics — the rejects become one NACK message; DESIGN §5.7), or `apply_atomic(delta)`
which applies all or nothing. A new snapshot is built copy-on-write and published with one assignment; then
subscribers get a `StateChange` naming the keys that changed and the new generation.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from hbone.authz.engine import DEFAULT_ROOT_NAMESPACE, PolicyIndex
from hbone.authz.model import Policy
from hbone.errors import ConfigError
from hbone.state.model import Service, Workload, validate_policy, validate_service, validate_workload
from hbone.state.snapshot import KindChange, MeshSnapshot, SnapshotIndexes

log = logging.getLogger(__name__)
T = TypeVar("T")


class Kind(enum.Enum):
    WORKLOAD = "workload"
    SERVICE = "service"
    POLICY = "policy"


@dataclass(frozen=True, slots=True)
class StateDelta:
    """One batch: upserts and removals per kind. Removal keys: workload uid, `ns/hostname`, `ns/name`."""

    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    policies: tuple[Policy, ...] = ()
    removed_workloads: tuple[str, ...] = ()
    removed_services: tuple[str, ...] = ()
    removed_policies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    kind: Kind
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.key or '<unnamed>'}: {self.message}"


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one apply changed. Only real changes count: re-sending an identical item changes nothing."""

    generation: int
    workloads: KindChange = field(default_factory=KindChange)
    services: KindChange = field(default_factory=KindChange)
    policies: KindChange = field(default_factory=KindChange)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    generation: int
    change: StateChange | None  # None when nothing changed
    rejects: tuple[Reject, ...] = ()

    @property
    def nack_message(self) -> str:
        """The rejects joined with "; ", as ztunnel fills `error_detail.message` (docs/istio.md §2 ACK/NACK)."""
        return "; ".join(str(r) for r in self.rejects)


Subscriber = Callable[[StateChange, MeshSnapshot], None]


def _keep(
    kind: Kind,
    items: Iterable[T],
    key: Callable[[T], str],
    check: Callable[[T], list[str]],
    rejects: list[Reject],
) -> tuple[T, ...]:
    """The acceptable items; each bad one (or a second item with the same key) becomes a named reject."""
    good: list[T] = []
    seen: set[str] = set()
    for item in items:
        try:
            k = key(item)
            problems = check(item)
        except Exception as e:  # a malformed item (wrong types) must not take the whole batch down
            k, problems = "", [f"malformed {kind.value}: {e!r}"]
        if not problems and k in seen:
            problems = ["appears twice in one update"]
        if problems:
            rejects.append(Reject(kind, k, "; ".join(problems)))
        else:
            seen.add(k)
            good.append(item)
    return tuple(good)


def _validate(delta: StateDelta) -> tuple[StateDelta, tuple[Reject, ...]]:
    """Split `delta` into the acceptable part and the rejects. Removals of unknown keys are not errors (xDS)."""
    rejects: list[Reject] = []
    good = StateDelta(
        workloads=_keep(Kind.WORKLOAD, delta.workloads, lambda w: w.uid, validate_workload, rejects),
        services=_keep(Kind.SERVICE, delta.services, lambda s: s.key, validate_service, rejects),
        policies=_keep(Kind.POLICY, delta.policies, lambda p: p.key, validate_policy, rejects),
        removed_workloads=tuple(delta.removed_workloads),
        removed_services=tuple(delta.removed_services),
        removed_policies=tuple(delta.removed_policies),
    )
    return good, tuple(rejects)


class MeshState:
    """The single writer-side object; share `snapshot()` results with readers."""

    def __init__(self, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self._lock = threading.Lock()  # serialises writers; readers never lock
        self._snapshot = MeshSnapshot(0, SnapshotIndexes.empty(), PolicyIndex(root_namespace=root_namespace))
        self._subscribers: list[Subscriber] = []

    def snapshot(self) -> MeshSnapshot:
        """The current immutable view (cheap: no copy)."""
        return self._snapshot

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(change, snapshot)` after every apply that changed something; returns an unsubscriber."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def apply(self, delta: StateDelta) -> ApplyResult:
        """Apply the good items of `delta`; bad ones come back as rejects (the caller NACKs with them)."""
        good, rejects = _validate(delta)
        return self._commit(good, rejects)

    def apply_atomic(self, delta: StateDelta) -> ApplyResult:
        """Apply all of `delta` or, if any item is bad, nothing: raise `ConfigError` naming every bad item."""
        good, rejects = _validate(delta)
        if rejects:
            raise ConfigError("update rejected: " + "; ".join(str(r) for r in rejects))
        return self._commit(good, ())

    def _commit(self, delta: StateDelta, rejects: tuple[Reject, ...]) -> ApplyResult:
        with self._lock:
            old = self._snapshot
            indexes, policy_index, changes = old.indexes.updated(old.policy_index, delta)
            if not any(changes):
                return ApplyResult(old.generation, None, rejects)
            generation = old.generation + 1
            new = MeshSnapshot(generation, indexes, policy_index)
            self._snapshot = new  # one reference swap: readers see the old or the new state, never a mix
            change = StateChange(generation, *changes)
            subscribers = tuple(self._subscribers)
        for callback in subscribers:
            try:
                callback(change, new)
            except Exception:  # the update is already applied; one broken subscriber must not hide it from others
                log.exception("state subscriber %r failed for generation %d", callback, generation)
        return ApplyResult(generation, change, rejects)
