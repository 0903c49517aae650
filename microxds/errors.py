"""One exception tree for the `microxds` package.

Errors carry the gRPC status they map to, so the edge that reports them (an ADS stream, the CA service, the CLI)
translates in one place. Config errors carry the file and line they come from so an operator can jump straight to
the problem: `str(err)` is `file:line: reason`.
"""

from __future__ import annotations

from hbone.errors import GrpcStatus


class MicroxdsError(Exception):
    """Root of every error raised by `microxds`."""

    grpc_status: GrpcStatus = GrpcStatus.INTERNAL


class ConfigError(MicroxdsError, ValueError):
    """Invalid configuration. `file`/`line` (1-based) point at the offending item when known."""

    grpc_status = GrpcStatus.INVALID_ARGUMENT

    def __init__(self, reason: str, *, file: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        if self.file is None:
            return self.reason
        if self.line is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"

    def at(self, file: str | None, line: int | None) -> ConfigError:
        """The same error located at `file:line` (keeps a location already set)."""
        if self.file is not None:
            return self
        return type(self)(self.reason, file=file, line=self.line if self.line is not None else line)


class ConfigErrors(ConfigError):
    """Several config errors found in one pass; the message lists them all, one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(
            "\n".join(str(e) for e in errors) if len(errors) > 1 else first.reason,
            file=None if len(errors) > 1 else first.file,
            line=None if len(errors) > 1 else first.line,
        )

    def at(self, file: str | None, line: int | None) -> ConfigError:
        return self


class UnknownTypeError(ConfigError):
    """A resource's `@type` names no message known to the descriptor pool."""


class DuplicateResourceError(ConfigError):
    """Two resources of one type share a name."""


class ResourceError(MicroxdsError, ValueError):
    """A resource that cannot be named, serialised or converted (bad xDS resources are rejected one by one)."""

    grpc_status = GrpcStatus.INVALID_ARGUMENT

    def __init__(self, reason: str, *, type_url: str = "", name: str = "") -> None:
        self.reason = reason
        self.type_url = type_url
        self.name = name
        where = f"{type_url.rsplit('/', 1)[-1]} {name!r}: " if type_url or name else ""
        super().__init__(where + reason)


class ProtocolError(MicroxdsError):
    """A peer broke the xDS protocol (bad nonce flow, unknown type on a typed stream, malformed request)."""

    grpc_status = GrpcStatus.INVALID_ARGUMENT


class Unavailable(MicroxdsError):
    """A control plane, CA or config store could not be reached; callers retry with backoff."""

    grpc_status = GrpcStatus.UNAVAILABLE


class StoreError(MicroxdsError):
    """The config store (etcd) refused a request or answered something we cannot use (not a connection problem)."""

    grpc_status = GrpcStatus.FAILED_PRECONDITION


class Compacted(StoreError):
    """A watch or read asked for a revision the store has compacted away; the reader must reload from scratch."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        super().__init__(f"revision {revision} is compacted (oldest kept: {compact_revision})")
