"""The request and response message types of a gRPC method, from what this process knows or from the server.

First the default descriptor pool (health, reflection, and every protobuf module already imported, e.g. by
`--proto`); then the server's reflection service (`grpc.reflection.v1`, falling back to `v1alpha`), whose file
descriptors are loaded into a private pool. None when neither knows the method: the caller stays with raw bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hbone.errors import GrpcError, HboneError
from hbone.grpc.codec import ProtoCodec
from hbone.grpc.reflection import VERSIONS, reflection_messages

if TYPE_CHECKING:
    from hbone.grpc.client import Channel

MAX_FILES = 256  # descriptor files accepted from one server answer


def _split(path: str) -> tuple[str, str]:
    service, _, method = path.strip("/").partition("/")
    return service, method


def _classes(pool: Any, service: str, method: str) -> tuple[Any, Any] | None:
    from google.protobuf import message_factory

    try:
        m = pool.FindServiceByName(service).methods_by_name[method]
    except KeyError:
        return None
    return message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type)


def local_types(path: str) -> tuple[Any, Any] | None:
    from google.protobuf import descriptor_pool

    return _classes(descriptor_pool.Default(), *_split(path))


async def method_types(channel: Channel, path: str, timeout: float = 10.0) -> tuple[Any, Any] | None:  # noqa: ASYNC109
    """(request class, response class) of `path` (`/pkg.Service/Method`), or None."""
    found = local_types(path)
    if found is not None:
        return found
    service, method = _split(path)
    for package in VERSIONS:
        try:
            files = await _ask(channel, package, service, timeout)
        except (GrpcError, HboneError, TimeoutError):
            continue  # no reflection (or not this version) on the server
        if files is None:
            continue
        pool = _pool_of(files)
        if pool is not None:
            return _classes(pool, service, method)
    return None


async def _ask(channel: Channel, package: str, symbol: str, timeout: float) -> list[bytes] | None:  # noqa: ASYNC109
    request, response = reflection_messages(package)
    call = channel.stream(
        f"/{package}.ServerReflection/ServerReflectionInfo", timeout=timeout,
        request_codec=ProtoCodec(request), response_codec=ProtoCodec(response),
    )  # fmt: skip
    async with call:
        await call.send_last(request(file_containing_symbol=symbol))
        answer = await call.recv()
    if answer is None or answer.WhichOneof("message_response") != "file_descriptor_response":
        return None
    return list(answer.file_descriptor_response.file_descriptor_proto)[:MAX_FILES]


def _pool_of(files: list[bytes]) -> Any | None:
    """A private pool holding the files, added dependencies first (the server may send them in any order)."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    protos = {}
    for raw in files:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
        protos[fdp.name] = fdp
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, depth: int = 0) -> None:
        if name in added or depth > 64:
            return
        fdp = protos.get(name)
        if fdp is None:  # a well-known import the server did not send: take it from the default pool
            try:
                pool.AddSerializedFile(descriptor_pool.Default().FindFileByName(name).serialized_pb)
            except (KeyError, TypeError, ValueError):
                pass
            added.add(name)
            return
        for dep in fdp.dependency:
            add(dep, depth + 1)
        pool.Add(fdp)
        added.add(name)

    try:
        for name in protos:
            add(name)
    except (TypeError, ValueError):
        return None
    return pool
