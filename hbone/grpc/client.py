"""The gRPC client: a `Channel` over one reused HTTP/2 connection (h2c, TLS, mesh mTLS, or inside an HBONE tunnel).

Calls follow grpc/doc/PROTOCOL-HTTP2.md: Request-Headers, Length-Prefixed-Messages, END_STREAM; the response is
Response-Headers, messages, Trailers, or a single Trailers-Only HEADERS frame. A per-call ``timeout`` is sent as
``grpc-timeout`` and enforced locally too: when it passes, the stream is reset with CANCEL and the call raises
DEADLINE_EXCEEDED. `ClientCall.cancel()` (or cancelling the awaiting task) resets with CANCEL as well. Every
failure surfaces as `GrpcError(status, message, details)`; stream resets and lost connections are mapped per the
spec's "Errors" table (`hbone.grpc.status.status_from_exception`).

The channel keeps one connection and opens every call on it, waiting for a slot at the server's
SETTINGS_MAX_CONCURRENT_STREAMS; a connection that received GOAWAY finishes its calls while new ones go to a fresh
connection (RFC 9113 §6.8).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from hbone.errors import (
    ConfigError,
    ConnectionLost,
    GrpcError,
    GrpcStatus,
    HboneError,
    ProtocolError,
    StreamReset,
)
from hbone.grpc.clientcall import ClientCall, ClientConnection
from hbone.grpc.codec import Codec, RawCodec
from hbone.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, SUPPORTED_ENCODINGS
from hbone.grpc.metadata import DEFAULT_USER_AGENT, Metadata, MetadataLike, encode_timeout
from hbone.grpc.transport import connect_over
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.net.tlsstream import ByteStream
from hbone.tls import MeshTls, check_server_peer
from hbone.wire.authority import parse_authority

__all__ = ["Channel", "ClientCall"]

MiB = 1024 * 1024
_RAW = RawCodec()


def _split_target(target: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`, by the one authority parser (`hbone.configtext` documents the forms)."""
    try:
        addr = parse_authority(target)
    except ProtocolError as e:
        raise ConfigError(f"bad server address {target!r}: {e}; use HOST:PORT or [V6]:PORT") from None
    return addr.host, addr.port


class Channel:
    """A client for one gRPC server address. Close it with `await channel.close()` (or ``async with``)."""

    def __init__(
        self,
        target: str,
        *,
        ssl: _ssl.SSLContext | None = None,
        tls: MeshTls | None = None,
        expected_identities: Sequence[str] = (),
        authority: str | None = None,
        settings: H2Settings | None = None,
        max_receive_message_size: int = 4 * MiB,
        max_send_message_size: int = 4 * MiB,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        metadata_provider: Callable[[], Awaitable[Sequence[tuple[str, str]]]] | None = None,
        tunnel: Callable[[], Awaitable[ByteStream]] | None = None,
        compression: str | None = None,
        connect_timeout: float = 10.0,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if ssl is not None and tls is not None:
            raise ValueError("give either ssl (server-auth TLS) or tls (mesh mTLS), not both")
        if tls is not None and not expected_identities and tunnel is None:
            raise ConfigError(
                f"gRPC over mesh mTLS to {target}: expected_identities is required, the server's SPIFFE id "
                "(an empty list would accept any workload certificate)"
            )
        self.target = target
        self._host, self._port = _split_target(target)
        self._ssl = ssl
        self._tls = tls
        self._expected = tuple(expected_identities)
        self._settings = settings or H2Settings.client()
        self._tunnel = tunnel
        self._connect_timeout = connect_timeout
        self.max_receive_message_size = max_receive_message_size or DEFAULT_MAX_MESSAGE_SIZE
        self.max_send_message_size = max_send_message_size
        self.compression = compression.lower() if compression and compression.lower() != "identity" else None
        self._metadata_provider = metadata_provider
        scheme = b"https" if ssl is not None or tls is not None else b"http"
        self._pseudo = ((b":method", b"POST"), (b":scheme", scheme))
        self._authority = (authority or target).encode()
        self._tail: list[tuple[bytes, bytes]] = [
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", user_agent.encode()),
            (b"grpc-accept-encoding", ",".join(e for e in SUPPORTED_ENCODINGS if e != "identity").encode()),
        ]
        self._tail += [(k.encode(), v.encode()) for k, v in Metadata.of(metadata).to_headers()]
        self._paths: dict[str, bytes] = {}
        self._conn: ClientConnection | None = None
        self._old: set[ClientConnection] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- calls ---------------------------------------------------------------------------------------------------

    async def unary(
        self,
        path: str,
        request: Any,
        *,
        request_codec: Codec[Any] = _RAW,
        response_codec: Codec[Any] = _RAW,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's gRPC deadline, sent as grpc-timeout
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> Any:
        """One request, one response."""
        call = self.stream(
            path,
            request_codec=request_codec,
            response_codec=response_codec,
            timeout=timeout,
            metadata=metadata,
            compression=compression,
        )
        async with call:
            await call.send_last(request)
            return await call._recv_one()

    async def server_stream(
        self,
        path: str,
        request: Any,
        *,
        request_codec: Codec[Any] = _RAW,
        response_codec: Codec[Any] = _RAW,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's gRPC deadline, sent as grpc-timeout
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> AsyncIterator[Any]:
        """One request, a stream of responses: ``async for reply in channel.server_stream(...)``."""
        call = self.stream(
            path,
            request_codec=request_codec,
            response_codec=response_codec,
            timeout=timeout,
            metadata=metadata,
            compression=compression,
        )
        async with call:
            await call.send_last(request)
            while (reply := await call.recv()) is not None:
                yield reply

    def stream(
        self,
        path: str,
        *,
        request_codec: Codec[Any] = _RAW,
        response_codec: Codec[Any] = _RAW,
        timeout: float | None = None,
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> ClientCall:
        """A client-streaming or bidi call: ``async with channel.stream(path) as call: ...``."""
        return ClientCall(
            self,
            path,
            request_codec=request_codec,
            response_codec=response_codec,
            timeout=timeout,
            metadata=metadata,
            compression=compression,
        )

    # --- connection ----------------------------------------------------------------------------------------------

    def _headers(
        self, path: str, timeout: float | None, metadata: MetadataLike, encoding: str | None, extra: Sequence[Any]
    ) -> list[tuple[bytes, bytes]]:
        raw_path = self._paths.get(path)
        if raw_path is None:
            parts = path.split("/")
            if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
                raise GrpcError(GrpcStatus.INTERNAL, f"method path {path!r} is not /package.Service/Method")
            raw_path = self._paths[path] = path.encode()
        headers = [*self._pseudo, (b":path", raw_path), (b":authority", self._authority), *self._tail]
        if timeout is not None:
            headers.append((b"grpc-timeout", encode_timeout(timeout).encode()))
        if encoding is not None:
            headers.append((b"grpc-encoding", encoding.encode()))
        if metadata or extra:
            md = Metadata.of(metadata)
            if extra:
                md = Metadata((*md.pairs, *Metadata.of(extra).pairs))
            headers += [(k.encode(), v.encode()) for k, v in md.to_headers()]
        return headers

    async def _connection(self) -> ClientConnection:
        conn = self._conn
        if conn is not None and conn.is_usable:
            return conn
        async with self._lock:
            if self._closed:
                raise GrpcError(GrpcStatus.UNAVAILABLE, "channel is closed")
            conn = self._conn
            if conn is not None and conn.is_usable:
                return conn
            if conn is not None and not conn.closed:
                self._old.add(conn)  # GOAWAY: it finishes its calls on its own
            self._old = {c for c in self._old if not c.closed}
            self._conn = conn = await self._dial()
            return conn

    async def _dial(self) -> ClientConnection:
        if self._tunnel is not None:
            carrier = await self._tunnel()
            conn = await connect_over(
                carrier, self._settings, factory=ClientConnection, peername=(self._host, self._port)
            )
            assert isinstance(conn, ClientConnection)
            return conn
        ctx = self._ssl if self._tls is None else self._tls.client_context()
        # Mesh mTLS identifies the server by SPIFFE SAN (no SNI, like ztunnel); plain TLS checks the host name.
        kwargs: dict[str, Any] = {"ssl": ctx}
        if ctx is not None:
            kwargs["server_hostname"] = "" if self._tls is not None else self._host
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: ClientConnection(client=True, settings=self._settings), self._host, self._port, **kwargs
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {self.target}: {exc!r}") from exc
        assert isinstance(conn, ClientConnection)
        if conn.closed:
            raise ConnectionLost(f"connection to {self.target} closed during setup (TLS peer without ALPN h2?)")
        if self._tls is not None:
            try:
                check_server_peer(conn.ssl_object, self._expected)
            except HboneError:
                await conn.close()
                raise
        return conn

    async def open_call(
        self,
        path: str,
        timeout: float | None,  # noqa: ASYNC109 - the call's gRPC deadline, sent as grpc-timeout
        metadata: MetadataLike,
        encoding: str | None,
    ) -> tuple[ClientConnection, Stream]:
        """Open one call's stream (`CallChannel`): its request headers, with the provider's metadata."""
        extra: Sequence[Any] = ()
        if self._metadata_provider is not None:
            extra = await self._metadata_provider()
        return await self._open(self._headers(path, timeout, metadata, encoding, extra))

    async def _open(self, headers: list[tuple[bytes, bytes]]) -> tuple[ClientConnection, Stream]:
        conn = await self._connection()
        try:
            return conn, await conn.open_stream(headers)
        except (StreamReset, ConnectionLost):
            if conn.is_usable:
                raise
            # GOAWAY raced our open: the stream was not processed, so one retry on a new connection is safe.
            conn = await self._connection()
            return conn, await conn.open_stream(headers)

    async def close(self) -> None:
        """Close the connections (calls still running fail with UNAVAILABLE)."""
        self._closed = True
        conns = [c for c in (self._conn, *self._old) if c is not None]
        self._conn = None
        self._old.clear()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
