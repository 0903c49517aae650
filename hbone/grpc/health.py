"""``grpc.health.v1.Health`` (grpc/doc/health-checking.md): Check and Watch, served by every `GrpcServer`.

The two messages are built at first use from a descriptor written out below (field numbers as upstream
``src/proto/grpc/health/v1/health.proto``) rather than from committed generated code: grpcio-health-checking is
not a dependency, and generated ``_pb2`` modules pin the protobuf runtime version they were generated with. The
file is added to protobuf's default pool (so reflection and ``grpc_health`` can coexist: an identical file is
accepted twice); if a different definition is already there, a private pool is used.

Statuses: the empty service name "" is the whole server. Check answers NOT_FOUND for a service never set; Watch
sends SERVICE_UNKNOWN for it and keeps the stream open, sending every later change (spec).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from hbone.errors import GrpcError, GrpcStatus
from hbone.grpc.codec import ProtoCodec

if TYPE_CHECKING:
    from hbone.grpc.servercall import MethodRegistry, ServerCall

__all__ = ["CHECK", "WATCH", "HealthServicer", "ServingStatus", "health_messages"]

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
_FILE = "grpc/health/v1/health.proto"


class ServingStatus(IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3  # Watch only


@functools.cache
def health_messages() -> tuple[Any, Any]:
    """``(HealthCheckRequest, HealthCheckResponse)`` message classes (built once, on first use)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name=_FILE, package="grpc.health.v1", syntax="proto3")
    req = fdp.message_type.add(name="HealthCheckRequest")
    req.field.add(
        name="service",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    resp = fdp.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for status in ServingStatus:
        enum.value.add(name=status.name, number=int(status))
    resp.field.add(
        name="status",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    svc = fdp.service.add(name="Health")
    svc.method.add(
        name="Check", input_type=".grpc.health.v1.HealthCheckRequest", output_type=".grpc.health.v1.HealthCheckResponse"
    )
    svc.method.add(
        name="Watch",
        input_type=".grpc.health.v1.HealthCheckRequest",
        output_type=".grpc.health.v1.HealthCheckResponse",
        server_streaming=True,
    )
    pool = descriptor_pool.Default()
    try:
        fd = pool.Add(fdp)
    except (TypeError, ValueError):  # a conflicting definition of the same file is loaded: keep ours apart
        pool = descriptor_pool.DescriptorPool()
        fd = pool.Add(fdp)
    if not hasattr(fd, "message_types_by_name"):
        fd = pool.FindFileByName(_FILE)
    types = fd.message_types_by_name
    return (
        message_factory.GetMessageClass(types["HealthCheckRequest"]),
        message_factory.GetMessageClass(types["HealthCheckResponse"]),
    )


class HealthServicer:
    """Serving statuses by service name, and the two Health methods over them."""

    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": ServingStatus.SERVING}
        self._changed: dict[str, asyncio.Event] = {}
        # Running Watch calls per service name (a name comes from the caller): the name's event is dropped with
        # the last of them, so watches of made-up names leave nothing behind.
        self._watchers: dict[str, int] = {}
        self._frozen = False

    def set_status(self, service: str, status: ServingStatus | int) -> None:
        """Set a service's status ("" is the whole server). Ignored after `enter_graceful_shutdown()`."""
        if self._frozen:
            return
        self._set(service, ServingStatus(status))

    def clear_status(self, service: str) -> None:
        self._status.pop(service, None)
        self._notify(service)

    def status(self, service: str = "") -> ServingStatus | None:
        return self._status.get(service)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, and no later change (grpc-go's Shutdown)."""
        for service in list(self._status):
            self._set(service, ServingStatus.NOT_SERVING)
        self._frozen = True

    def _set(self, service: str, status: ServingStatus) -> None:
        if self._status.get(service) is not status:
            self._status[service] = status
            self._notify(service)

    def _notify(self, service: str) -> None:
        event = self._changed.pop(service, None)
        if event is not None:
            event.set()

    def register(self, server: MethodRegistry) -> None:
        request, response = health_messages()
        server.add_unary(CHECK, self.check, ProtoCodec(request), ProtoCodec(response))
        server.add_server_stream(WATCH, self.watch, ProtoCodec(request), ProtoCodec(response))

    async def check(self, request: Any, call: ServerCall) -> Any:
        status = self._status.get(request.service)
        if status is None:
            raise GrpcError(GrpcStatus.NOT_FOUND, f"unknown service {request.service!r}")
        return health_messages()[1](status=int(status))

    async def watch(self, request: Any, call: ServerCall) -> AsyncIterator[Any]:
        response = health_messages()[1]
        service = request.service
        last: ServingStatus | None = None
        self._watchers[service] = self._watchers.get(service, 0) + 1
        try:
            while True:
                # Take the event before reading the status, so a change between the two is never missed.
                event = self._changed.setdefault(service, asyncio.Event())
                current = self._status.get(service, ServingStatus.SERVICE_UNKNOWN)
                if current is not last:
                    last = current
                    yield response(status=int(current))
                await event.wait()
        finally:
            left = self._watchers.pop(service) - 1
            if left:
                self._watchers[service] = left
            else:
                self._changed.pop(service, None)
