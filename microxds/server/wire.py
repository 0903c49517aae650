"""Responses assembled from pre-serialised pieces, so each resource is encoded once for all clients.

A `DiscoveryResponse` / `DeltaDiscoveryResponse` on the wire is its scalar fields followed by one length-delimited
field 2 (`resources`) per resource; protobuf allows the fields in any order and concatenated repeated fields
parse as one list (protobuf encoding guide, "Last One Wins" / "Packed repeated fields"). So a response is the
serialised head (version, type URL, nonce, removals) plus the field-2 entries of its resources, which are
built once per resource and shared by every client (`sotw_entry`, `delta_entry`). Building a 2,000-resource
initial response is then one `b"".join` instead of 2,000 protobuf messages per client, which also keeps the
initial-sync memory peak low (docs/performance.md complaint 6; go-control-plane PR #1324 for the same idea).

`WireResponse` is what the stream cores return; the service's codec sends `serialize()`. Tests and tools that read
fields get them from a message parsed on first attribute access.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Generic, TypeVar, cast

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from hbone.grpc.codec import CodecError
from microxds.resources import Resource

M = TypeVar("M", bound=Message)

_RESOURCES_TAG = b"\x12"  # field 2, wire type 2 (length-delimited), in both response messages
# Entries are memoised per Resource; the bound keeps replaced resources from living forever (an entry is about
# the size of the resource, so 32,768 of them is a few MiB at most). A miss only costs one re-encode.
_ENTRY_CACHE = 1 << 15


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _entry(body: bytes) -> bytes:
    return _RESOURCES_TAG + _varint(len(body)) + body


_WRAPPER_URL = "type.googleapis.com/envoy.service.discovery.v3.Resource"


def _wrapped(res: Resource, *, body: bool, aliases: Iterable[str] = ()) -> discovery_pb2.Resource:
    """`Resource{name, version, resource, ttl}`; without `body` it is a TTL heartbeat (xds_protocol "TTL")."""
    out = discovery_pb2.Resource(name=res.name, version=res.version, aliases=aliases)
    if body:
        out.resource.CopyFrom(res.to_any())
    if res.ttl is not None:
        out.ttl.FromNanoseconds(int(res.ttl * 1e9))
    return out


@lru_cache(maxsize=_ENTRY_CACHE)
def sotw_entry(res: Resource) -> bytes:
    """`DiscoveryResponse.resources` entry: the resource as a packed Any; a TTL'd one wrapped in a `Resource`
    (SotW carries TTLs only that way: client feature `xds.config.resource-in-sotw`)."""
    if res.ttl is None:
        return _entry(res.to_any().SerializeToString())
    return _entry(_packed_wrapper(_wrapped(res, body=True)))


@lru_cache(maxsize=_ENTRY_CACHE)
def delta_entry(res: Resource) -> bytes:
    """`DeltaDiscoveryResponse.resources` entry: a `Resource{name, version, resource, ttl}` without aliases."""
    return _entry(_wrapped(res, body=True).SerializeToString())


def delta_entry_with_aliases(res: Resource, aliases: Iterable[str]) -> bytes:
    """Per client: the aliases echoed are the ones this client asked for (delta `Resource.aliases`)."""
    return _entry(_wrapped(res, body=True, aliases=aliases).SerializeToString())


@lru_cache(maxsize=_ENTRY_CACHE)
def delta_heartbeat(res: Resource) -> bytes:
    """A heartbeat: the name, the current version and the TTL, no resource (the client's copy stays good)."""
    return _entry(_wrapped(res, body=False).SerializeToString())


def _packed_wrapper(wrapper: discovery_pb2.Resource) -> bytes:
    return bytes(any_pb2.Any(type_url=_WRAPPER_URL, value=wrapper.SerializeToString()).SerializeToString())


class WireResponse(Generic[M]):
    """One response: a head message without resources, plus shared pre-encoded resource entries."""

    __slots__ = ("_entries", "_head", "_parsed")

    def __init__(self, head: M, entries: list[bytes]) -> None:
        self._head = head
        self._entries = entries
        self._parsed: M | None = None

    def serialize(self) -> bytes:
        return bytes(self._head.SerializeToString()) + b"".join(self._entries)

    def message(self) -> M:
        """The full response as a protobuf message (parsed once; for tests, CSDS-style tools and Fetch)."""
        if self._parsed is None:
            parsed: M = cast(M, type(self._head)())
            parsed.ParseFromString(self.serialize())
            self._parsed = parsed
            return parsed
        return self._parsed

    def __len__(self) -> int:
        return len(self._entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message(), name)


class ResponseCodec(Generic[M]):
    """gRPC codec for a response method: sends `WireResponse`s as they are and plain messages serialised."""

    content_subtype = "proto"

    __slots__ = ("_cls",)

    def __init__(self, message_class: type[M]) -> None:
        self._cls = message_class

    def encode(self, message: Any) -> bytes:
        if isinstance(message, WireResponse):
            return message.serialize()
        if not isinstance(message, self._cls):
            raise CodecError(f"expected {self._cls.__name__}, got {type(message).__name__}")
        return bytes(message.SerializeToString())

    def decode(self, data: bytes) -> M:
        try:
            message: M = cast(M, self._cls())
            message.ParseFromString(data)
            return message
        except Exception as exc:  # DecodeError, and upb's others on hostile input
            raise CodecError(f"failed to parse {self._cls.__name__}: {exc}") from None
