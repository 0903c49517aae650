"""An etcd v3 client on `hbone.grpc.Channel`: the KV calls, one prefix watch, auth and endpoint failover.

etcd's v3 API is gRPC (etcd-io/etcd `api/etcdserverpb/rpc.proto`; our subset is in `proto/etcd/`), so it runs on
the same raw gRPC layer as everything else here: no grpcio, no second HTTP/2 implementation, and the client is
itself tested against a real non-Python gRPC server. What we use:

* `KV/Range` over a prefix (`range_end` = the prefix with its last byte + 1), `KV/Txn` for all-or-nothing writes
  guarded by `mod_revision` compares, `KV/Compact` (tests and operators).
* `Watch/Watch`: one bidi stream, one watcher from an explicit `start_revision`; a response with
  `compact_revision` set means that revision is gone (`Compacted`), the caller reloads.
* `Auth/Authenticate` (user + password) gives a token sent as the `token` metadata of every call; an expired
  token is renewed once per failing call.

Several endpoints may be given: calls go to the current one and move to the next when it is unreachable
(UNAVAILABLE, connection errors), so a client survives the loss of an etcd member.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from hbone.configtext import TextError, target_text
from hbone.errors import GrpcError, GrpcStatus, HboneError
from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from microxds._pb.etcd.etcdserverpb import rpc_pb2
from microxds.errors import Compacted, ConfigError, StoreError, Unavailable

M = TypeVar("M")
MiB = 1 << 20
_KV = "/etcdserverpb.KV/"
_WATCH = "/etcdserverpb.Watch/Watch"
_AUTH = "/etcdserverpb.Auth/Authenticate"
# Failures that mean "this member is not answering": try the next endpoint.
_MOVE_ON = (GrpcStatus.UNAVAILABLE, GrpcStatus.DEADLINE_EXCEEDED)


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that selects every key starting with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff (or empty): every key from `prefix` on


@dataclass(frozen=True, slots=True)
class StoreURL:
    """`etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (or `etcds://` for TLS). The prefix always ends with '/'."""

    endpoints: tuple[str, ...]
    prefix: str
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> StoreURL:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("etcd", "etcds"):
            raise ConfigError(f"bad store {text!r}: use etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
        hosts, _, path = rest.partition("/")
        endpoints = tuple(h.strip() for h in hosts.split(",") if h.strip())
        if not endpoints:
            raise ConfigError(f"bad store {text!r}: no etcd endpoint (etcd://HOST:PORT/PREFIX)")
        for ep in endpoints:
            try:
                target_text(ep)
            except TextError as e:
                raise ConfigError(f"bad etcd endpoint {ep!r} in {text!r}: {e}") from None
        prefix = "/" + unquote(path).strip("/")
        if prefix == "/":
            raise ConfigError(f"bad store {text!r}: give a key prefix, e.g. etcd://127.0.0.1:2379/microxds/prod")
        return cls(endpoints, prefix + "/", scheme == "etcds")

    def __str__(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{','.join(self.endpoints)}{self.prefix.rstrip('/')}"


class EtcdClient:
    """`async with EtcdClient([...]) as etcd:`; every method raises `Unavailable` (no member answered),
    `StoreError` (etcd refused) or `Compacted`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ssl: _ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        max_message_size: int = 64 * MiB,
    ) -> None:
        if not endpoints:
            raise ConfigError("no etcd endpoints")
        if (user is None) != (password is None):
            raise ConfigError("etcd auth needs both a user and a password")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._channels = [
            Channel(ep, ssl=ssl, max_receive_message_size=max_message_size, max_send_message_size=max_message_size,
                    connect_timeout=timeout)
            for ep in self.endpoints
        ]  # fmt: skip
        self._current = 0
        self._user = user
        self._password = password
        self._token: str | None = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels), return_exceptions=True)

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self.endpoints[self._current]

    # -- KV -----------------------------------------------------------------------------------------------------

    async def range_prefix(self, prefix: str, *, keys_only: bool = False) -> rpc_pb2.RangeResponse:
        key = prefix.encode()
        req = rpc_pb2.RangeRequest(key=key, range_end=prefix_end(key), keys_only=keys_only)
        return await self._unary("Range", req, rpc_pb2.RangeResponse)

    async def put(self, key: str, value: bytes) -> rpc_pb2.PutResponse:
        return await self._unary("Put", rpc_pb2.PutRequest(key=key.encode(), value=value), rpc_pb2.PutResponse)

    async def delete(self, key: str) -> rpc_pb2.DeleteRangeResponse:
        req = rpc_pb2.DeleteRangeRequest(key=key.encode())
        return await self._unary("DeleteRange", req, rpc_pb2.DeleteRangeResponse)

    async def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        return await self._unary("Txn", req, rpc_pb2.TxnResponse)

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        await self._unary("Compact", req, rpc_pb2.CompactionResponse)

    # -- watch --------------------------------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[rpc_pb2.WatchResponse]:
        """Every change under `prefix` from `start_revision` (inclusive), as etcd's responses (events grouped by
        revision, plus progress notifications carrying only `header.revision`). Raises `Compacted` when
        `start_revision` is no longer in etcd's history, `Unavailable` when the stream breaks."""
        key = prefix.encode()
        create = rpc_pb2.WatchCreateRequest(
            key=key, range_end=prefix_end(key), start_revision=start_revision, progress_notify=True
        )
        channel = self._channels[self._current]
        metadata = await self._metadata()
        try:
            async with channel.stream(
                _WATCH,
                request_codec=ProtoCodec(rpc_pb2.WatchRequest),
                response_codec=ProtoCodec(rpc_pb2.WatchResponse),
                metadata=metadata,
            ) as call:
                await call.send(rpc_pb2.WatchRequest(create_request=create))
                while (resp := await call.recv()) is not None:
                    if resp.compact_revision:
                        raise Compacted(start_revision, resp.compact_revision)
                    if resp.canceled:
                        raise StoreError(f"etcd canceled the watch on {prefix}: {resp.cancel_reason or 'no reason'}")
                    yield resp
        except GrpcError as exc:
            if exc.status is GrpcStatus.UNAUTHENTICATED:
                self._token = None
            raise self._translate(exc) from None
        except HboneError as exc:
            self._next_endpoint()
            raise Unavailable(f"etcd {channel.target}: {exc}") from None
        raise Unavailable(f"etcd {channel.target} ended the watch stream")

    # -- internals ----------------------------------------------------------------------------------------------

    def _next_endpoint(self) -> None:
        self._current = (self._current + 1) % len(self._channels)

    def _translate(self, exc: GrpcError) -> StoreError | Unavailable:
        if exc.status in _MOVE_ON:
            self._next_endpoint()
            return Unavailable(f"etcd {self.endpoint}: {exc.message or exc.status.name}")
        return StoreError(f"etcd: {exc.message or exc.status.name}")

    async def _metadata(self) -> list[tuple[str, str]]:
        if self._user is None:
            return []
        if self._token is None:
            req = rpc_pb2.AuthenticateRequest(name=self._user, password=self._password or "")
            resp = await self._call(_AUTH, req, rpc_pb2.AuthenticateResponse, [])
            self._token = resp.token
        return [("token", self._token)]

    async def _unary(self, method: str, req: Any, resp_cls: type[M]) -> M:
        for attempt in range(2):
            metadata = await self._metadata()
            try:
                return await self._call(_KV + method, req, resp_cls, metadata)
            except StoreError as exc:
                # An expired or revoked token: authenticate again, once.
                if attempt == 0 and self._user is not None and "token" in str(exc).lower():
                    self._token = None
                    continue
                raise
        raise AssertionError("unreachable")

    async def _call(self, path: str, req: Any, resp_cls: type[M], metadata: list[tuple[str, str]]) -> M:
        """One unary call, moving through the endpoints while they are unreachable."""
        errors: list[str] = []
        for _ in range(len(self._channels)):
            channel = self._channels[self._current]
            try:
                result: M = await channel.unary(
                    path, req, request_codec=ProtoCodec(type(req)), response_codec=ProtoCodec(resp_cls),
                    timeout=self.timeout, metadata=metadata,
                )  # fmt: skip
                return result
            except GrpcError as exc:
                if exc.status not in _MOVE_ON:
                    raise StoreError(f"etcd: {exc.message or exc.status.name}") from None
                errors.append(f"{channel.target}: {exc.message or exc.status.name}")
            except (HboneError, OSError) as exc:
                errors.append(f"{channel.target}: {exc}")
            self._next_endpoint()
        raise Unavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")


@contextlib.asynccontextmanager
async def connect(url: StoreURL, **kwargs: Any) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(url.endpoints, **kwargs)
    try:
        yield client
    finally:
        await client.close()
