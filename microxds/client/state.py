"""Sans-IO xDS client state: per-type subscriptions, ACK/NACK, resume, and the reconnect backoff rule.

No asyncio and no transport here (DESIGN §5.1): `DeltaSession` / `SotwSession` turn responses into the requests to
send back, and hand resources to a `ResourceHandler` that applies the good ones and names the bad ones. Rules
(docs/xds.md "istiod as the server"; docs/xds.md):

* After every response: `{type_url, response_nonce}`; if any resource failed, `error_detail.message` holds the
  rejects joined with "; " and the good resources are still applied. A response of an unknown type is ACKed.
* Each (re)connect sends one initial request per type carrying the node and, for Delta, `initial_resource_versions`
  = every retained name → version, so the server skips unchanged resources. Names rejected by a NACK are forgotten.
* Wildcard types start with empty subscribe lists (ztunnel's form); on-demand types subscribe *and* unsubscribe
  "*" (subscribe to nothing) and add single names later with `resource_names_subscribe=[name]`.
* Backoff: 10 ms doubling to 15 s; reset after a clean end, UNKNOWN/CANCELLED/DEADLINE_EXCEEDED, or UNAVAILABLE
  caused by GOAWAY / connection age (ztunnel `src/xds/client.rs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from hbone.errors import GrpcError, GrpcStatus
from microxds.protoreg import message_class

WILDCARD = "*"
BACKOFF_INITIAL = 0.010
BACKOFF_MAX = 15.0
_INVALID_ARGUMENT = 3


@dataclass(frozen=True, slots=True)
class Received:
    """One resource out of a response: its name, version, aliases and serialised body (the Any's value)."""

    name: str
    version: str
    body: bytes
    aliases: tuple[str, ...] = ()


class ResourceHandler(Protocol):
    """Applies resources of one type. Returns name → reason for every rejected resource (the rest applied)."""

    def apply(self, type_url: str, resources: Sequence[Received], removed: Sequence[str]) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class TypeSpec:
    type_url: str
    on_demand: bool = False  # subscribe to nothing at first; names are added by lookups


@dataclass(slots=True)
class TypeStats:
    responses: int = 0
    resources: int = 0  # resources received (what a resume saves)
    removals: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: str = ""


@dataclass(slots=True)
class DeltaTypeState:
    """One type on the client side of Delta xDS (persists across streams: that is what makes resume work)."""

    spec: TypeSpec
    names: set[str] = field(default_factory=set)  # explicit subscriptions (on-demand lookups)
    known: dict[str, str] = field(default_factory=dict)  # name -> accepted version
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> name, for on-demand lookups
    missing: set[str] = field(default_factory=set)  # subscribed names the server said do not exist
    acked: bool = False  # the first response of this type was ACKed (readiness)
    stats: TypeStats = field(default_factory=TypeStats)
    expiry: dict[str, float] = field(default_factory=dict)  # name -> clock time its TTL runs out (xDS "TTL")

    def initial_request(self, node: base_pb2.Node) -> discovery_pb2.DeltaDiscoveryRequest:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=self.spec.type_url, node=node)
        if self.spec.on_demand:
            req.resource_names_subscribe.append(WILDCARD)
            req.resource_names_unsubscribe.append(WILDCARD)  # Istio: "*" both ways means nothing
            req.resource_names_subscribe.extend(sorted(self.names))
        elif self.names:
            req.resource_names_subscribe.extend([WILDCARD, *sorted(self.names)])
        # else: empty lists on the first request = wildcard (ztunnel's form)
        for name, version in self.known.items():
            req.initial_resource_versions[name] = version
        return req

    def resolve(self, name: str) -> str | None:
        """The canonical name `name` refers to (itself or an alias), if we hold it."""
        if name in self.known:
            return name
        canonical = self.aliases.get(name)
        return canonical if canonical in self.known else None

    def on_response(
        self, resp: discovery_pb2.DeltaDiscoveryResponse, handler: ResourceHandler, now: float = 0.0
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        self.stats.responses += 1
        rejects: dict[str, str] = {}
        batch: list[Received] = []
        seen: set[str] = set()
        ttls: dict[str, float | None] = {}
        for r in resp.resources:
            if not r.HasField("resource"):
                # A TTL heartbeat: the version we hold is still good for another TTL.
                if r.HasField("ttl") and self.known.get(r.name) == r.version:
                    self.expiry[r.name] = now + r.ttl.ToTimedelta().total_seconds()
                continue
            ttls[r.name] = r.ttl.ToTimedelta().total_seconds() if r.HasField("ttl") else None
            if r.name in seen:
                rejects[r.name] = "appears twice in one response"
                continue
            seen.add(r.name)
            if r.resource.type_url and r.resource.type_url != self.spec.type_url:
                rejects[r.name] = f"carries {r.resource.type_url}, not {self.spec.type_url}"
                continue
            batch.append(Received(r.name, r.version, bytes(r.resource.value), tuple(r.aliases)))
        removed = list(resp.removed_resources)
        self.stats.resources += len(batch)
        self.stats.removals += len(removed)
        rejects.update(handler.apply(self.spec.type_url, batch, removed))
        for name in removed:
            self._forget(name)
            if name in self.names:
                self.missing.add(name)  # "does not exist" for an on-demand lookup
        for res in batch:
            if res.name in rejects:
                self._forget(res.name)  # rejected names are not remembered (ztunnel)
                continue
            self.known[res.name] = res.version
            ttl = ttls.get(res.name)
            if ttl is None:
                self.expiry.pop(res.name, None)
            else:
                self.expiry[res.name] = now + ttl
            self.missing.discard(res.name)
            for alias in res.aliases:
                self.aliases[alias] = res.name
                self.missing.discard(alias)
        self.acked = True
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=self.spec.type_url, response_nonce=resp.nonce)
        if rejects:
            message = "; ".join(f"{name}: {why}" for name, why in sorted(rejects.items()))
            ack.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=message))
            self.stats.nacks += 1
            self.stats.last_nack = message
        else:
            self.stats.acks += 1
        return ack

    def expire(self, now: float, handler: ResourceHandler) -> list[str]:
        """Drop the resources whose TTL ran out without a heartbeat (the control plane is gone): the handler is
        told they were removed, and they are no longer declared on the next stream."""
        gone = sorted(n for n, t in self.expiry.items() if t <= now)
        if gone:
            handler.apply(self.spec.type_url, [], gone)
            for name in gone:
                self._forget(name)
        return gone

    def _forget(self, name: str) -> None:
        self.known.pop(name, None)
        self.expiry.pop(name, None)
        for alias in [a for a, n in self.aliases.items() if n == name]:
            del self.aliases[alias]


class DeltaSession:
    """The client half of one Delta ADS conversation, across reconnects."""

    def __init__(
        self,
        node: base_pb2.Node,
        types: Iterable[TypeSpec],
        handler: ResourceHandler,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.handler = handler
        self.types = {t.type_url: DeltaTypeState(t) for t in types}
        self.unknown_responses = 0
        self.clock = clock  # for TTLs; injected so tests need no wall time

    def start(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """The requests opening a new stream: one per type, each with the node and what we already hold."""
        return [state.initial_request(self.node) for state in self.types.values()]

    def receive(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
        """The ACK or NACK for `resp` (after applying it)."""
        state = self.types.get(resp.type_url)
        if state is None:
            self.unknown_responses += 1  # not ours: ACK it and move on (docs/istio.md §2)
            return discovery_pb2.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        return state.on_response(resp, self.handler, self.clock())

    def expire(self) -> dict[str, list[str]]:
        """Drop every resource whose TTL ran out; type -> names dropped."""
        now = self.clock()
        out = {t: gone for t, state in self.types.items() if (gone := state.expire(now, self.handler))}
        return out

    def next_expiry(self) -> float | None:
        """Clock time of the earliest TTL deadline, if any resource has a TTL."""
        return min((t for s in self.types.values() for t in s.expiry.values()), default=None)

    def subscribe(self, type_url: str, name: str) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """An on-demand subscription to one name (no nonce); None when already subscribed."""
        state = self.types[type_url]
        if name in state.names:
            return None
        state.names.add(name)
        state.missing.discard(name)
        return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=[name])

    def lookup_state(self, type_url: str, name: str) -> bool | None:
        """True when `name` (or an alias) is held, False when the server said it does not exist, None if unknown."""
        state = self.types[type_url]
        if state.resolve(name) is not None:
            return True
        return False if name in state.missing else None

    @property
    def ready(self) -> bool:
        """Every non-on-demand type has had a response ACKed or NACKed (ztunnel holds readiness until then)."""
        return all(s.acked for s in self.types.values() if not s.spec.on_demand)

    def resources_received(self) -> int:
        return sum(s.stats.resources for s in self.types.values())


# --- SotW ------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SotwTypeState:
    """One type on the client side of SotW: the version and nonce to echo, the names we ask for."""

    type_url: str
    names: tuple[str, ...] = ()  # () = wildcard
    full_state: bool = True  # LDS/CDS-like: a resource missing from a response is deleted
    version: str = ""
    nonce: str = ""
    known: dict[str, str] = field(default_factory=dict)
    acked: bool = False
    stats: TypeStats = field(default_factory=TypeStats)

    def request(self, node: base_pb2.Node | None = None) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(
            type_url=self.type_url, version_info=self.version, response_nonce=self.nonce, resource_names=self.names
        )
        if node is not None:
            req.node.CopyFrom(node)
        return req

    def on_response(
        self, resp: discovery_pb2.DiscoveryResponse, handler: ResourceHandler
    ) -> discovery_pb2.DiscoveryRequest:
        self.stats.responses += 1
        rejects: dict[str, str] = {}
        batch: list[Received] = []
        heartbeats = 0
        for any_msg in resp.resources:
            if _is_heartbeat(any_msg):
                heartbeats += 1  # a TTL heartbeat: the copy we hold is still good
                continue
            name, body = _sotw_name(any_msg)
            if name is None:
                rejects[f"#{len(batch) + len(rejects)}"] = "resource without a name"
            elif name in {r.name for r in batch}:
                rejects[name] = "appears twice in one response"  # SotW rule 7
            else:
                batch.append(Received(name, resp.version_info, body))
        present = {r.name for r in batch}
        only_heartbeats = heartbeats > 0 and not batch and not rejects
        removed = [n for n in self.known if n not in present] if self.full_state and not only_heartbeats else []
        self.stats.resources += len(batch)
        rejects.update(handler.apply(self.type_url, batch, removed))
        for name in removed:
            self.known.pop(name, None)
        for res in batch:
            if res.name not in rejects:
                self.known[res.name] = res.version
        self.nonce = resp.nonce
        self.acked = True
        if rejects:
            self.stats.nacks += 1
            self.stats.last_nack = "; ".join(f"{n}: {why}" for n, why in sorted(rejects.items()))
            req = self.request()  # version_info stays the last good one (SotW rule 3)
            req.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=self.stats.last_nack))
            return req
        self.stats.acks += 1
        self.version = resp.version_info
        return self.request()


def _wrapped(any_msg: object) -> discovery_pb2.Resource | None:
    """The `Resource` wrapper inside an Any, or None when the Any holds something else or bytes that do not parse
    (a server's corrupt resource is a reject, never an exception out of the session)."""
    if not getattr(any_msg, "type_url", "").endswith("envoy.service.discovery.v3.Resource"):
        return None
    try:
        return discovery_pb2.Resource.FromString(bytes(getattr(any_msg, "value", b"")))
    except DecodeError:
        return None


def _is_heartbeat(any_msg: object) -> bool:
    """A `Resource` wrapper without a body (xds_protocol "TTL": a heartbeat)."""
    wrapped = _wrapped(any_msg)
    return wrapped is not None and not wrapped.HasField("resource")


def _sotw_name(any_msg: object) -> tuple[str | None, bytes]:
    """SotW resources are bare Anys (or wrapped in discovery Resource); name them by decoding the `name` field."""
    type_url: str = getattr(any_msg, "type_url", "")
    value: bytes = bytes(getattr(any_msg, "value", b""))
    if type_url.endswith("envoy.service.discovery.v3.Resource"):
        wrapped = _wrapped(any_msg)
        if wrapped is None:
            return None, value
        return wrapped.name or None, bytes(wrapped.resource.value)
    try:
        msg = message_class(type_url.rsplit("/", 1)[-1]).FromString(value)
    except Exception:  # unknown or undecodable: reported by name as a reject
        return None, value
    name = getattr(msg, "name", None) or getattr(msg, "cluster_name", None)
    return (str(name) if name else None), value


class SotwSession:
    """The client half of a SotW ADS conversation (Envoy-style types; Istio ambient types use Delta)."""

    def __init__(self, node: base_pb2.Node, types: Iterable[SotwTypeState], handler: ResourceHandler) -> None:
        self.node = node
        self.handler = handler
        self.types = {t.type_url: t for t in types}

    def start(self) -> list[discovery_pb2.DiscoveryRequest]:
        """Initial requests on a new stream: the node once, the last ACKed version, no nonce (nonces are per
        stream)."""
        out = []
        for i, state in enumerate(self.types.values()):
            state.nonce = ""
            out.append(state.request(self.node if i == 0 else None))
        return out

    def receive(self, resp: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
        state = self.types.get(resp.type_url)
        if state is None:
            return discovery_pb2.DiscoveryRequest(
                type_url=resp.type_url, version_info=resp.version_info, response_nonce=resp.nonce
            )
        return state.on_response(resp, self.handler)

    @property
    def ready(self) -> bool:
        return all(s.acked for s in self.types.values())

    def resources_received(self) -> int:
        return sum(s.stats.resources for s in self.types.values())


# --- reconnect backoff -----------------------------------------------------------------------------------------

_BENIGN = (GrpcStatus.OK, GrpcStatus.UNKNOWN, GrpcStatus.CANCELLED, GrpcStatus.DEADLINE_EXCEEDED)
_CHURN_HINTS = ("goaway", "transport is closing", "max connection age", "max_connection_age", "shutting down")


def resets_backoff(error: BaseException | None) -> bool:
    """Whether a stream ending this way reconnects at the initial delay (ztunnel `src/xds/client.rs`)."""
    if error is None:
        return True  # a clean end of stream
    if isinstance(error, GrpcError):
        if error.status in _BENIGN:
            return True
        if error.status is GrpcStatus.UNAVAILABLE:
            text = error.message.lower()
            return any(hint in text for hint in _CHURN_HINTS)
    return False


class Backoff:
    """10 ms doubling to 15 s. `next()` gives the delay before the next attempt."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    def peek(self) -> float:
        return self._next
