"""gRPC server reflection (grpc/doc/server-reflection.md), `grpc.reflection.v1` and `v1alpha`, on `GrpcServer`.

Clients (grpcurl, grpcio-reflection's `ProtoReflectionDescriptorDatabase`, `hbone grpc call`) list the services and
fetch the descriptors of the files that define a symbol, so they can encode and decode messages as JSON. The two
versions are wire-identical; both are served. The messages are built at first use from descriptors written out
below (field numbers as upstream `reflection.proto`), like `grpc.health.v1`, so no generated code is needed.
Descriptors come from protobuf's default pool: a service whose messages were never imported there is listed but
its files are NOT_FOUND. Bounded: one request → one response, each at most the server's message size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hbone.errors import GrpcStatus
from hbone.grpc.codec import ProtoCodec

if TYPE_CHECKING:
    from hbone.grpc.servercall import MethodRegistry, ServerCall

__all__ = ["VERSIONS", "ReflectionServicer", "reflection_messages"]

VERSIONS = ("grpc.reflection.v1", "grpc.reflection.v1alpha")
MAX_FILES = 256  # descriptors in one answer (a symbol's file and its dependencies)


@functools.cache
def reflection_messages(package: str) -> tuple[Any, Any]:
    """`(ServerReflectionRequest, ServerReflectionResponse)` for `package` (one of VERSIONS)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    name = f"grpc/reflection/{package.rsplit('.', 1)[-1]}/reflection.proto"
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")

    def message(msg_name: str, *fields: tuple[str, int, int, str | None, bool, int | None]) -> None:
        m = fdp.message_type.add(name=msg_name)
        if any(o is not None for *_, o in fields):
            m.oneof_decl.add(name="message_request" if msg_name.endswith("Request") else "message_response")
        for fname, number, ftype, type_name, repeated, oneof in fields:
            field = m.field.add(name=fname, number=number, type=ftype)
            field.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
            if type_name:
                field.type_name = f".{package}.{type_name}"
            if oneof is not None:
                field.oneof_index = oneof

    s, i32, b, msg = f.TYPE_STRING, f.TYPE_INT32, f.TYPE_BYTES, f.TYPE_MESSAGE
    message(
        "ServerReflectionRequest", ("host", 1, s, None, False, None), ("file_by_filename", 3, s, None, False, 0),
        ("file_containing_symbol", 4, s, None, False, 0),
        ("file_containing_extension", 5, msg, "ExtensionRequest", False, 0),
        ("all_extension_numbers_of_type", 6, s, None, False, 0), ("list_services", 7, s, None, False, 0),
    )  # fmt: skip
    message("ExtensionRequest", ("containing_type", 1, s, None, False, None), ("extension_number", 2, i32, None,
            False, None))  # fmt: skip
    message(
        "ServerReflectionResponse", ("valid_host", 1, s, None, False, None),
        ("original_request", 2, msg, "ServerReflectionRequest", False, None),
        ("file_descriptor_response", 4, msg, "FileDescriptorResponse", False, 0),
        ("all_extension_numbers_response", 5, msg, "ExtensionNumberResponse", False, 0),
        ("list_services_response", 6, msg, "ListServiceResponse", False, 0),
        ("error_response", 7, msg, "ErrorResponse", False, 0),
    )  # fmt: skip
    message("FileDescriptorResponse", ("file_descriptor_proto", 1, b, None, True, None))
    message("ExtensionNumberResponse", ("base_type_name", 1, s, None, False, None),
            ("extension_number", 2, i32, None, True, None))  # fmt: skip
    message("ListServiceResponse", ("service", 1, msg, "ServiceResponse", True, None))
    message("ServiceResponse", ("name", 1, s, None, False, None))
    message("ErrorResponse", ("error_code", 1, i32, None, False, None), ("error_message", 2, s, None, False, None))
    svc = fdp.service.add(name="ServerReflection")
    svc.method.add(
        name="ServerReflectionInfo", input_type=f".{package}.ServerReflectionRequest",
        output_type=f".{package}.ServerReflectionResponse", client_streaming=True, server_streaming=True,
    )  # fmt: skip
    pool = descriptor_pool.Default()
    try:
        pool.Add(fdp)
    except (TypeError, ValueError):  # another definition of these names is loaded (grpcio-reflection): keep apart
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse")),
    )


class ReflectionServicer:
    """Answers from the server's registered methods and protobuf's default descriptor pool."""

    def __init__(self, server: MethodRegistry) -> None:
        self.server = server

    def register(self) -> None:
        for package in VERSIONS:
            request, response = reflection_messages(package)

            async def info(call: ServerCall, response: Any = response) -> None:
                while (req := await call.recv()) is not None:
                    await call.send(self.answer(req, response))

            self.server.add_bidi(
                f"/{package}.ServerReflection/ServerReflectionInfo", info, ProtoCodec(request), ProtoCodec(response)
            )

    def services(self) -> list[str]:
        return sorted({path.split("/")[1] for path in self.server.methods})

    def answer(self, req: Any, response_type: Any) -> Any:
        resp = response_type(valid_host=req.host)
        resp.original_request.CopyFrom(req)
        kind = req.WhichOneof("message_request")
        try:
            if kind == "list_services":
                for name in self.services():
                    resp.list_services_response.service.add(name=name)
            elif kind == "file_containing_symbol":
                self._files(resp, _pool().FindFileContainingSymbol(req.file_containing_symbol))
            elif kind == "file_by_filename":
                self._files(resp, _pool().FindFileByName(req.file_by_filename))
            else:
                resp.error_response.error_code = int(GrpcStatus.UNIMPLEMENTED)
                resp.error_response.error_message = f"{kind or 'an empty request'} is not supported"
        except KeyError as e:
            resp.ClearField("file_descriptor_response")
            resp.error_response.error_code = int(GrpcStatus.NOT_FOUND)
            resp.error_response.error_message = f"not found: {e.args[0] if e.args else e}"
        return resp

    @staticmethod
    def _files(resp: Any, first: Any) -> None:
        for fd in _with_dependencies(first):
            resp.file_descriptor_response.file_descriptor_proto.append(fd.serialized_pb)


def _pool() -> Any:
    from google.protobuf import descriptor_pool

    return descriptor_pool.Default()


def _with_dependencies(first: Any) -> Iterator[Any]:
    """The file, then every file it imports (transitively), each once, at most MAX_FILES."""
    seen: set[str] = set()
    todo = [first]
    while todo and len(seen) < MAX_FILES:
        fd = todo.pop(0)
        if fd.name in seen:
            continue
        seen.add(fd.name)
        yield fd
        todo.extend(fd.dependencies)
