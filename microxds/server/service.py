"""The gRPC edge of the control plane: ADS (SotW + Delta), per-type xDS services and CSDS on `GrpcServer`.

Everything protocol-specific lives in the sans-IO cores (`SotwStream`, `DeltaStream`) driven by `PushQueue`; this
module only maps gRPC methods to them, authenticates the caller, checks the access rule on the node group of the
first request, and translates our errors to gRPC statuses in one place (`_status_of`).

Methods (xds_protocol.rst "RPC services"; docs/xds.md):
* `envoy.service.discovery.v3.AggregatedDiscoveryService/{StreamAggregatedResources,DeltaAggregatedResources}`
* `envoy.service.{cluster,listener,route,endpoint,secret}.v3.*DiscoveryService/{Stream,Delta,Fetch}<Type>`
* `envoy.service.status.v3.ClientStatusDiscoveryService/{StreamClientStatus,FetchClientStatus}`
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2

from hbone.errors import GrpcError, GrpcStatus, HboneError
from hbone.grpc.codec import ProtoCodec
from microxds.cache.types import Cache, NodeHash
from microxds.errors import MicroxdsError
from microxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from microxds.server.access import AccessPolicy, Caller, JwtVerifier, bearer_token
from microxds.server.delta import DeltaStream
from microxds.server.heartbeat import Heartbeats
from microxds.server.pushqueue import PushQueue, StreamCore
from microxds.server.sotw import SotwResponse, SotwStream
from microxds.server.status import ClientStatus, StatusRegistry
from microxds.server.wire import ResponseCodec

log = logging.getLogger("microxds.server")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"
# type_url -> (service, method suffix), the per-type services for clients that do not use ADS.
PER_TYPE_SERVICES: dict[str, tuple[str, str]] = {
    CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters"),
    LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners"),
    ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "Routes"),
    ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints"),
    SECRET: ("envoy.service.secret.v3.SecretDiscoveryService", "Secrets"),
}

Req = TypeVar("Req", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)


class Call(Protocol):
    """The part of `hbone.grpc.server.ServerCall` this module uses."""

    @property
    def peer(self) -> Any: ...

    @property
    def metadata(self) -> Any: ...

    async def recv(self) -> Any: ...

    async def send(self, message: Any) -> None: ...


class Registrar(Protocol):
    """The part of `hbone.grpc.server.GrpcServer` this module uses."""

    def add_bidi(self, path: str, handler: Any, request_codec: Any, response_codec: Any) -> None: ...

    def add_unary(self, path: str, handler: Any, request_codec: Any, response_codec: Any) -> None: ...


def _status_of(exc: BaseException) -> GrpcError:
    """Our errors -> gRPC status, the one place they are translated."""
    if isinstance(exc, GrpcError):
        return exc
    if isinstance(exc, MicroxdsError):
        return GrpcError(exc.grpc_status, str(exc))
    if isinstance(exc, HboneError):
        return GrpcError(GrpcStatus.UNAVAILABLE, str(exc))
    return GrpcError(GrpcStatus.INTERNAL, f"{type(exc).__name__}: {exc}")


class XdsService:
    """Serves a cache to xDS clients. `register(grpc_server)` adds every method."""

    def __init__(
        self,
        cache: Cache,
        *,
        registry: StatusRegistry,
        queue: PushQueue,
        group_of: NodeHash,
        access: AccessPolicy | None = None,
        jwt: JwtVerifier | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.cache = cache
        self.heartbeats = heartbeats
        self.registry = registry
        self.queue = queue
        self.group_of = group_of
        self.access = access or AccessPolicy.permissive_default()
        self.jwt = jwt
        self.denied = 0

    def register(self, server: Registrar) -> None:
        # Responses may be pre-assembled `WireResponse`s (shared resource bytes), sent without re-encoding.
        sotw_req, sotw_resp = ProtoCodec(discovery_pb2.DiscoveryRequest), ResponseCodec(discovery_pb2.DiscoveryResponse)
        delta_req = ProtoCodec(discovery_pb2.DeltaDiscoveryRequest)
        delta_resp = ResponseCodec(discovery_pb2.DeltaDiscoveryResponse)
        server.add_bidi(f"/{ADS_SERVICE}/StreamAggregatedResources", self._sotw_handler(None), sotw_req, sotw_resp)
        server.add_bidi(f"/{ADS_SERVICE}/DeltaAggregatedResources", self._delta_handler(None), delta_req, delta_resp)
        for type_url, (service, kind) in PER_TYPE_SERVICES.items():
            server.add_bidi(f"/{service}/Stream{kind}", self._sotw_handler(type_url), sotw_req, sotw_resp)
            server.add_bidi(f"/{service}/Delta{kind}", self._delta_handler(type_url), delta_req, delta_resp)
            server.add_unary(f"/{service}/Fetch{kind}", self._fetch_handler(type_url), sotw_req, sotw_resp)
        csds_req, csds_resp = ProtoCodec(csds_pb2.ClientStatusRequest), ProtoCodec(csds_pb2.ClientStatusResponse)
        server.add_bidi(f"/{CSDS_SERVICE}/StreamClientStatus", self._csds_stream, csds_req, csds_resp)
        server.add_unary(f"/{CSDS_SERVICE}/FetchClientStatus", self._csds_fetch, csds_req, csds_resp)

    # -- callers ----------------------------------------------------------------------------------------------

    def caller_of(self, call: Call) -> Caller:
        """Who is calling: the verified SPIFFE id and address from the connection, the JWT subject from metadata."""
        peer = call.peer
        identity = getattr(peer, "identity", None)
        address = getattr(peer, "address", None)
        tls = bool(getattr(peer, "tls", False))
        subject = None
        metadata = call.metadata
        token = bearer_token(metadata.get_all("authorization")) if metadata is not None else None
        if token is not None and self.jwt is not None:
            subject = self.jwt.subject(token)  # Unauthenticated on a bad token: never fall back to anonymous
        transport = "mtls" if identity is not None else "tls" if tls else "plaintext"
        return Caller(str(identity) if identity is not None else None, subject, address, transport)

    async def _requests(self, call: Call, caller: Caller) -> AsyncIterator[Any]:
        """The stream's requests; the first one's node decides the group the caller must be allowed to read."""
        first = await call.recv()
        if first is None:
            return
        node = first.node if first.HasField("node") else base_pb2.Node()
        group = self.group_of(node)
        if not self.access.allows(caller, group):
            self.denied += 1
            log.warning("denied %s: node %r in group %r", caller, node.id, group)
        self.access.check(caller, group)
        interned = _Interned(first)
        del first, node  # a first request can name thousands of resources: don't pin it for the stream's life
        yield interned
        del interned
        while (req := await call.recv()) is not None:
            yield _Interned(req)

    async def _serve(self, call: Call, make: Callable[[str], StreamCore[Any, Any]]) -> None:
        try:
            caller = self.caller_of(call)
            core = make(str(caller))
            status = getattr(core, "status", None)  # SotwStream/DeltaStream: who is behind the stream, for /debug
            if isinstance(status, ClientStatus):
                status.identity = caller.identity or caller.subject
                status.address = f"{caller.address[0]}:{caller.address[1]}" if caller.address else None
            await self.queue.serve(core, self._requests(call, caller), call.send)
        except GrpcError:
            raise
        except MicroxdsError as exc:
            raise _status_of(exc) from None

    def _sotw_handler(self, type_url: str | None) -> Callable[[Call], Awaitable[None]]:
        def make(peer: str) -> SotwStream:
            core = SotwStream(self.cache, registry=self.registry, peer=peer, type_url=type_url)
            core.heartbeats = self.heartbeats
            return core

        async def handler(call: Call) -> None:
            await self._serve(call, make)

        return handler

    def _delta_handler(self, type_url: str | None) -> Callable[[Call], Awaitable[None]]:
        def make(peer: str) -> DeltaStream:
            core = DeltaStream(self.cache, registry=self.registry, peer=peer, type_url=type_url)
            core.heartbeats = self.heartbeats
            return core

        async def handler(call: Call) -> None:
            await self._serve(call, make)

        return handler

    def _fetch_handler(
        self, type_url: str
    ) -> Callable[[discovery_pb2.DiscoveryRequest, Call], Awaitable[SotwResponse | discovery_pb2.DiscoveryResponse]]:
        """REST-style Fetch<Type>: one request, the current resources, no watch left behind."""

        async def handler(
            req: discovery_pb2.DiscoveryRequest, call: Call
        ) -> SotwResponse | discovery_pb2.DiscoveryResponse:
            try:
                caller = self.caller_of(call)
                self.access.check(caller, self.group_of(req.node))
                core = SotwStream(self.cache, peer=str(caller), type_url=type_url)  # not in CSDS: it is gone at once
                try:
                    fetch = discovery_pb2.DiscoveryRequest()
                    fetch.CopyFrom(req)
                    fetch.ClearField("response_nonce")  # Fetch is stateless; a nonce is optional and meaningless
                    if not fetch.resource_names:
                        fetch.resource_names.append("*")
                    responses = core.handle(fetch)
                finally:
                    core.close()
            except MicroxdsError as exc:
                raise _status_of(exc) from None
            return responses[0] if responses else discovery_pb2.DiscoveryResponse(type_url=type_url)

        return handler

    # -- CSDS -------------------------------------------------------------------------------------------------

    def client_status(self, req: csds_pb2.ClientStatusRequest, caller: Caller) -> csds_pb2.ClientStatusResponse:
        """Connected clients matching the request's node matchers, limited to the groups the caller may read."""

        def visible(node: base_pb2.Node) -> bool:
            if not self.access.allows(caller, self.group_of(node)):
                return False
            return not req.node_matchers or any(node_matches(m, node) for m in req.node_matchers)

        return self.registry.client_status_response(visible, include_resources=not req.exclude_resource_contents)

    async def _csds_fetch(self, req: csds_pb2.ClientStatusRequest, call: Call) -> csds_pb2.ClientStatusResponse:
        try:
            return self.client_status(req, self.caller_of(call))
        except MicroxdsError as exc:
            raise _status_of(exc) from None

    async def _csds_stream(self, call: Call) -> None:
        try:
            caller = self.caller_of(call)
            while (req := await call.recv()) is not None:
                await call.send(self.client_status(req, caller))
        except MicroxdsError as exc:
            raise _status_of(exc) from None


class _Interned:
    """A request whose resource names are interned strings.

    Thousands of clients subscribe to the same names; the subscription state keeps each name it is given, so
    without interning every client holds its own copy of every name (about 55 bytes x 2,000 names per client in
    the benchmark). `sys.intern` makes them share one string per name; interned strings are freed when unused.
    """

    __slots__ = ("_req", "initial_resource_versions", "resource_names", "resource_names_subscribe",
                 "resource_names_unsubscribe")  # fmt: skip

    def __init__(self, req: Any) -> None:
        self._req = req
        if isinstance(req, discovery_pb2.DeltaDiscoveryRequest):
            self.resource_names_subscribe = [sys.intern(n) for n in req.resource_names_subscribe]
            self.resource_names_unsubscribe = list(req.resource_names_unsubscribe)
            self.initial_resource_versions = {sys.intern(n): v for n, v in req.initial_resource_versions.items()}
        else:
            self.resource_names = [sys.intern(n) for n in req.resource_names]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._req, name)


def string_matches(m: string_pb2.StringMatcher, value: str) -> bool:
    """envoy.type.matcher.v3.StringMatcher for the node matchers of a CSDS request (custom matchers: never)."""
    kind = m.WhichOneof("match_pattern")
    if kind is None:
        return True
    fold: Callable[[str], str] = str.lower if m.ignore_case else str
    v = fold(value)
    if kind == "exact":
        return v == fold(m.exact)
    if kind == "prefix":
        return v.startswith(fold(m.prefix))
    if kind == "suffix":
        return v.endswith(fold(m.suffix))
    if kind == "contains":
        return fold(m.contains) in v
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    return False


def node_matches(m: node_pb2.NodeMatcher, node: base_pb2.Node) -> bool:
    if m.HasField("node_id") and not string_matches(m.node_id, node.id):
        return False
    for sm in m.node_metadatas:
        value: Any = node.metadata
        for seg in sm.path:
            fields = value.fields if hasattr(value, "fields") else value.struct_value.fields
            if seg.key not in fields:
                return False
            value = fields[seg.key]
        if sm.value.HasField("string_match") and not string_matches(sm.value.string_match, value.string_value):
            return False
    return True
