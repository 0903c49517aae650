"""Incremental (Delta) ADS stream handler, transport-free.

Feed `handle(DeltaDiscoveryRequest)` and `flush()`, send what they return in order (`PushQueue.serve`). Rules
(xds_protocol.rst "Incremental xDS"; numbers from docs/xds.md, Delta):

1. Every resource carries its own version (the content hash); `system_version_info` is only a debugging digest.
2. Every response has a nonce. Subscription changes are honoured even when the request's nonce is stale.
3. Every name in `resource_names_subscribe` is answered, even if we think the client already has it.
4. Unsubscribing an unknown name is a no-op; dropping a name still covered by "*" re-sends that resource.
5. `removed_resources` carries deletions of resources the client holds, never names that never existed
   (go-control-plane PR #488); types in `never_remove_types` (Istio: ECDS, envoy#32823) are never removed.
6. `initial_resource_versions` (first request per type): unchanged resources are skipped and ones that disappeared
   are listed as removed (Istio got this wrong in #41494).
7. Wildcard: "*" or a legacy empty first request; "*" subscribed and unsubscribed together means nothing.

Names may be aliases (`Resource.aliases`, e.g. Istio Address "network/IP"): the response carries the canonical
resource with the aliases the client asked for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from itertools import chain

from envoy.service.discovery.v3 import discovery_pb2

from microxds.cache.types import Cache
from microxds.resources import Resource
from microxds.server.sotw import push_order
from microxds.server.status import StatusRegistry
from microxds.server.streamcore import StreamCore
from microxds.server.subscription import Subscription
from microxds.server.wire import WireResponse, delta_entry, delta_entry_with_aliases, delta_heartbeat

DeltaResponse = WireResponse[discovery_pb2.DeltaDiscoveryResponse]


class _Reply:
    """Resources to send and names to remove for one type, built then turned into one response."""

    __slots__ = ("removed", "send")

    def __init__(self) -> None:
        self.send: dict[str, Resource] = {}
        self.removed: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.send or self.removed)


class DeltaStream(StreamCore):
    """One Delta stream (ADS, or a single-type stream when `type_url` is given)."""

    kind = "delta"

    def __init__(
        self,
        cache: Cache,
        *,
        registry: StatusRegistry | None = None,
        peer: str = "",
        type_url: str | None = None,
        never_remove_types: Collection[str] = (),
    ) -> None:
        super().__init__(cache, registry=registry, peer=peer, type_url=type_url)
        self._never_remove = frozenset(never_remove_types)

    # -- inputs -------------------------------------------------------------------------------------------

    def handle(self, req: discovery_pb2.DeltaDiscoveryRequest) -> list[DeltaResponse]:
        watch, type_url, sub, first = self._begin(req)
        if first:
            for name, version in req.initial_resource_versions.items():
                sub.record(name, version)  # rule 6: what the client already holds from a previous stream
        self._ack(type_url, req)
        change = sub.apply_delta(req.resource_names_subscribe, req.resource_names_unsubscribe, first=first)
        if not first and not change:
            return []
        view = watch.resources(type_url)
        aliases = watch.aliases(type_url)
        reply = _Reply()
        if first:
            # Reconcile what the client declared with what exists (rule 6), then fill in the rest.
            for name in list(sub.sent):
                res = view.get(name)
                if res is not None and self._covers(sub, res):
                    if res.version != sub.sent[name]:
                        reply.send[name] = res
                else:
                    self._drop(type_url, sub, name, gone=res is None, reply=reply)
        for name in change.requested:  # rule 3, but a declared unchanged version needs nothing (rule 6)
            res = self._resolve(name, view, aliases)
            if res is not None and not (first and sub.sent.get(res.name) == res.version):
                reply.send[res.name] = res
        for name in change.removed:
            canonical = name if name in view or name in sub.sent else aliases.get(name, name)
            res = view.get(canonical)
            if res is not None and self._covers(sub, res):
                reply.send[canonical] = res  # rule 4: still covered by "*": the client dropped it, resend
            else:
                sub.forget(canonical)
        if change.wildcard_added:
            reply.send.update((n, r) for n, r in view.items() if sub.sent.get(n) != r.version)
        if change.wildcard_removed:
            for name in list(sub.sent):
                res = view.get(name)
                if res is None or not self._covers(sub, res):
                    sub.forget(name)  # the client drops wildcard-only resources itself
        if first or reply:
            return [self._response(type_url, sub, reply)]
        return []

    def flush(self) -> list[DeltaResponse]:
        """Push accumulated cache changes: O(changed names) per client, in push order."""
        pending, self._pending = self._pending, {}
        out: list[DeltaResponse] = []
        if self._watch is None or self.closed:
            return out
        for type_url in push_order(pending):
            sub = self._subs[type_url]
            changed = pending[type_url]
            names: Collection[str] = changed
            view = self._watch.resources(type_url)
            if not sub.wildcard and not self._watch.aliases(type_url) and len(changed) > len(sub.names) + len(sub.sent):
                names = {n for n in chain(sub.names, sub.sent) if n in changed}
            reply = _Reply()
            for name in names:
                res = view.get(name)
                if res is None:
                    if name in sub.sent:
                        self._drop(type_url, sub, name, gone=True, reply=reply)
                elif sub.sent.get(name) != res.version and self._covers(sub, res):
                    reply.send[name] = res
            if reply:
                out.append(self._response(type_url, sub, reply))
        for type_url, sub, beats in self._due_heartbeats():
            self._nonce += 1
            head = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=sub.version(), type_url=type_url, nonce=str(self._nonce)
            )
            self.status.heartbeat(type_url, head.system_version_info, head.nonce, len(beats))
            out.append(WireResponse(head, [delta_heartbeat(r) for r in beats]))
        return out

    # -- internals ----------------------------------------------------------------------------------------

    def _ack(self, type_url: str, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        nonce = req.response_nonce
        if not nonce:
            return  # a spontaneous subscription change (rule 2)
        ts = self.status.types[type_url]
        if nonce != ts.sent_nonce:
            self.status.stale(type_url)  # still honour its subscription changes (rule 2)
            if not req.HasField("error_detail"):
                return
        if req.HasField("error_detail"):
            version = ts.sent_version if nonce == ts.sent_nonce else ""
            self.status.nacked(type_url, version, nonce, req.error_detail.message)
        else:
            self.status.acked(type_url, ts.sent_version, nonce)

    @staticmethod
    def _covers(sub: Subscription, res: Resource) -> bool:
        return sub.covers(res.name) or any(a in sub.names for a in res.aliases)

    @staticmethod
    def _resolve(name: str, view: Mapping[str, Resource], aliases: Mapping[str, str]) -> Resource | None:
        res = view.get(name)
        if res is None and (canonical := aliases.get(name)) is not None:
            res = view.get(canonical)
        return res

    def _drop(self, type_url: str, sub: Subscription, name: str, *, gone: bool, reply: _Reply) -> None:
        """Forget `name`; tell the client only if it was deleted (rule 5) and the type allows removals."""
        if sub.forget(name) and gone and type_url not in self._never_remove:
            reply.removed.append(name)

    def _response(self, type_url: str, sub: Subscription, reply: _Reply) -> DeltaResponse:
        for name, res in reply.send.items():
            sub.record(name, res.version)
        sub.settle()
        self._nonce += 1
        nonce = str(self._nonce)
        version = sub.version()
        head = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=reply.removed
        )
        self.status.sent(type_url, version, nonce, len(reply.send) + len(reply.removed))
        self._sent_ttl(type_url, reply.send.values())
        return WireResponse(head, self._entries(sub, reply.send.values()))

    @staticmethod
    def _entries(sub: Subscription, resources: Iterable[Resource]) -> list[bytes]:
        """Shared pre-encoded entries; only a resource echoing this client's aliases is encoded per client."""
        names = sub.names
        return [
            delta_entry_with_aliases(res, [a for a in res.aliases if a in names])
            if res.aliases and names and any(a in names for a in res.aliases)
            else delta_entry(res)
            for res in resources
        ]
