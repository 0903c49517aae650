"""State-of-the-world (SotW) ADS stream handler, transport-free.

Feed `handle(DiscoveryRequest)` and `flush()` (after `on_dirty` fires) and send what they return, in order;
`PushQueue.serve` does exactly that. Rules (xds_protocol.rst; numbers from docs/xds.md):

1. The node is cached from the first request of the stream.
2. `version_info` is per type: a digest of the (name, version) pairs the client holds, equal on every replica.
   Nonces come from one per-stream counter, so they increase per type too.
3. ACK/NACK is decided by the presence of `error_detail`, never by comparing versions (envoy PR #14841).
4. A request whose `response_nonce` is not the latest we sent for that type is ignored (Istio `ShouldRespond`).
5. Responses go out only on change; an ACK never triggers a resend (that loops).
6. Names newly added to `resource_names` are answered even if unchanged (go-control-plane #399, #583).
8. LDS and CDS responses carry the full state; 9. other types carry only what changed.
10. Requested names that do not exist yet are remembered and pushed when they appear.
11. LDS/CDS may be wildcard (explicit or legacy) or named (gRPC).

We never hold a response until every name is requested (go-control-plane's ADS mode; go #349, grpc-go #5131).
A NACKed version is not resent: the client only gets a new response when content changes (go #564).
After a CDS response, the CLAs of the clusters it changed are pushed at once, even if unchanged: Envoy warms a
cluster only on an EDS response (Kuma PR #331), and its follow-up EDS request may carry a stale nonce.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from envoy.service.discovery.v3 import discovery_pb2

from microxds.cache.consistency import eds_name
from microxds.cache.types import Cache
from microxds.cache.versions import digest_of
from microxds.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, Resource
from microxds.server.status import StatusRegistry
from microxds.server.streamcore import StreamCore
from microxds.server.subscription import Subscription
from microxds.server.wire import WireResponse, sotw_entry

FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER})
LEGACY_WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
SotwResponse = WireResponse[discovery_pb2.DiscoveryResponse]
_ORDER = {t: i for i, t in enumerate(PUSH_ORDER)}


def push_order(type_urls: Iterable[str]) -> list[str]:
    """CDS, EDS, LDS, RDS, ... then unknown types by name (make-before-break, Istio `PushOrder`)."""
    return sorted(type_urls, key=lambda t: (_ORDER.get(t, len(_ORDER)), t))


class SotwStream(StreamCore):
    """One SotW stream (ADS, or a single-type stream when `type_url` is given)."""

    kind = "sotw"

    def __init__(
        self,
        cache: Cache,
        *,
        registry: StatusRegistry | None = None,
        peer: str = "",
        type_url: str | None = None,
        full_state_types: Collection[str] = FULL_STATE_TYPES,
        legacy_wildcard_types: Collection[str] = LEGACY_WILDCARD_TYPES,
    ) -> None:
        super().__init__(cache, registry=registry, peer=peer, type_url=type_url)
        self._full_state = frozenset(full_state_types)
        self._legacy = frozenset(legacy_wildcard_types)

    # -- inputs -------------------------------------------------------------------------------------------

    def handle(self, req: discovery_pb2.DiscoveryRequest) -> list[SotwResponse]:
        """Process one request; returns the responses to send now (possibly none)."""
        watch, type_url, sub, _ = self._begin(req)
        ts = self.status.types[type_url]
        nonce = req.response_nonce
        if ts.sent_nonce and nonce != ts.sent_nonce:
            self.status.stale(type_url)  # rule 4: a newer response is on its way; answer that one's ACK
            return []
        if nonce:
            if req.HasField("error_detail"):  # rule 3
                self.status.nacked(type_url, ts.sent_version, nonce, req.error_detail.message)
            else:
                self.status.acked(type_url, req.version_info, nonce)
        change = sub.apply_sotw(req.resource_names, legacy_wildcard=type_url in self._legacy)
        first = not ts.sent_nonce
        if not first and not change:
            return []  # rule 5: a plain ACK/NACK; never resend
        out: list[SotwResponse] = []
        view = watch.resources(type_url)
        if first and not nonce and req.version_info and self._resumes(req.version_info, sub, view, type_url):
            return out
        if type_url in self._full_state:
            desired = self._desired(sub, view)
            if first or change.requested & view.keys() or self._differs(desired, sub.sent):
                self._send_full(type_url, sub, desired, out)
        else:
            for name in change.removed:
                sub.forget(name)
            if change.wildcard_removed:
                for name in [n for n in sub.sent if not sub.covers(n)]:
                    sub.forget(name)
            send = {n: r for n in change.requested if (r := view.get(n)) is not None}  # rule 6
            if change.wildcard_added:
                send.update((n, r) for n, r in view.items() if sub.sent.get(n) != r.version)
            if send:
                self._send_subset(type_url, sub, send.values(), out)
        return out

    def flush(self) -> list[SotwResponse]:
        """Push the cache changes accumulated since the last flush, in push order."""
        pending, self._pending = self._pending, {}
        out: list[SotwResponse] = []
        if self._watch is None or self.closed:
            return out
        for type_url in push_order(pending):
            sub = self._subs[type_url]
            names = pending[type_url]
            view = self._watch.resources(type_url)
            if type_url in self._full_state:
                if any(sub.covers(n) and self._stale(n, view, sub) for n in names):
                    self._send_full(type_url, sub, self._desired(sub, view), out)
                continue
            candidates = names if sub.wildcard or len(names) <= len(sub.names) else sub.names & names
            send: list[Resource] = []
            for name in candidates:
                if not sub.covers(name):
                    continue
                res = view.get(name)
                if res is None:
                    sub.forget(name)  # rule 9: no deletion signal outside LDS/CDS
                elif sub.sent.get(name) != res.version:
                    send.append(res)
            if send:
                self._send_subset(type_url, sub, send, out)
        for type_url, sub, beats in self._due_heartbeats():
            # SotW heartbeats carry the resources themselves: Envoy's SotW client refreshes a TTL only from a
            # resource with a body, and an LDS/CDS response is the full state (a subset would delete the rest).
            view = self._watch.resources(type_url)
            resources = list(self._desired(sub, view).values()) if type_url in self._full_state else beats
            self._nonce += 1
            head = discovery_pb2.DiscoveryResponse(
                version_info=sub.version(), type_url=type_url, nonce=str(self._nonce)
            )
            self.status.heartbeat(type_url, head.version_info, head.nonce, len(beats))
            out.append(WireResponse(head, [sotw_entry(r) for r in resources]))
        return out

    # -- internals ----------------------------------------------------------------------------------------

    def _resumes(self, version_info: str, sub: Subscription, view: Mapping[str, Resource], type_url: str) -> bool:
        """A client reconnecting (to us or to another replica) with the `version_info` of exactly what it would get
        now already holds it: record that and send nothing (versions are content digests, equal on every replica).
        """
        desired = self._desired(sub, view)
        if not desired or digest_of({n: r.version for n, r in desired.items()}) != version_info:
            return False
        for res in desired.values():
            sub.record(res.name, res.version)
        sub.settle()
        self.status.resumed(type_url, version_info)
        return True

    @staticmethod
    def _stale(name: str, view: Mapping[str, Resource], sub: Subscription) -> bool:
        res = view.get(name)
        return sub.sent.get(name) != (res.version if res is not None else None)

    @staticmethod
    def _desired(sub: Subscription, view: Mapping[str, Resource]) -> Mapping[str, Resource]:
        if sub.wildcard:
            return view
        return {n: r for n in sub.names if (r := view.get(n)) is not None}

    @staticmethod
    def _differs(desired: Mapping[str, Resource], sent: Mapping[str, str]) -> bool:
        return len(desired) != len(sent) or any(sent.get(n) != r.version for n, r in desired.items())

    def _send_full(
        self,
        type_url: str,
        sub: Subscription,
        desired: Mapping[str, Resource],
        out: list[SotwResponse],
    ) -> None:
        """Rule 8: every resource the client should have; whatever is missing is deleted on the client."""
        changed = [r for n, r in desired.items() if sub.sent.get(n) != r.version]
        for name in [n for n in sub.sent if n not in desired]:
            sub.forget(name)
        for res in changed:
            sub.record(res.name, res.version)
        out.append(self._response(type_url, sub, desired.values(), len(desired)))
        if type_url == CLUSTER and changed:
            self._warm_endpoints(changed, out)

    def _send_subset(
        self,
        type_url: str,
        sub: Subscription,
        resources: Collection[Resource],
        out: list[SotwResponse],
    ) -> None:
        for res in resources:
            sub.record(res.name, res.version)
        out.append(self._response(type_url, sub, resources, len(resources)))

    def _warm_endpoints(self, clusters: Iterable[Resource], out: list[SotwResponse]) -> None:
        """Kuma PR #331: after CDS, answer EDS for the changed clusters even when their CLAs are unchanged."""
        sub = self._subs.get(ENDPOINT)
        if sub is None or self._watch is None:
            return
        view = self._watch.resources(ENDPOINT)
        send: dict[str, Resource] = {}
        for cluster in clusters:
            name = eds_name(cluster)
            if name is not None and sub.covers(name) and (res := view.get(name)) is not None:
                send[name] = res
        if send:
            self._send_subset(ENDPOINT, sub, send.values(), out)

    def _response(self, type_url: str, sub: Subscription, resources: Iterable[Resource], count: int) -> SotwResponse:
        sub.settle()
        self._nonce += 1
        nonce = str(self._nonce)
        version = sub.version()
        head = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
        self.status.sent(type_url, version, nonce, count)
        resources = list(resources)
        self._sent_ttl(type_url, resources)
        return WireResponse(head, [sotw_entry(r) for r in resources])  # each resource encoded once, shared
