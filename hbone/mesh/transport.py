"""An httpx transport whose connections are HBONE tunnels (needs the `httpx` extra).

httpcore's `AsyncNetworkBackend` is the seam: `connect_tcp(host, port)` opens a tunnel through the mesh instead
of a socket, and httpcore's own HTTP/1.1 (h11) and HTTP/2 (h2) connections, pooling and keep-alive run inside it.
An `https://` URL adds TLS inside the tunnel (`start_tls`). A refused tunnel (401 denied, 503 no route) surfaces
as `MeshConnectError`, an `httpx.ConnectError` carrying the HBONE status and the server's reason.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

import httpcore
import httpx

from hbone.errors import ConnectRefused, HboneError
from hbone.identity.spiffe import SpiffeId
from hbone.mesh.streams import TunnelPeer, TunnelStream
from hbone.net.tlsstream import TlsStream

__all__ = ["MeshConnectError", "MeshTransport", "TunnelOpener"]


class TunnelOpener(Protocol):
    """What the transport needs from its mesh (`hbone.mesh.core.Mesh`): one tunnel per connection."""

    async def open_tunnel(
        self, target: str, *, via: str | None = None, identities: Sequence[str | SpiffeId] = ()
    ) -> tuple[TunnelStream, TunnelPeer]: ...


class MeshConnectError(httpx.ConnectError):
    """The mesh could not open the tunnel: `status` is the HBONE server's answer (401 when authorization denied
    the caller, 503 when there is no route or the upstream is unreachable), `reason` what it said."""

    def __init__(self, message: str, *, request: httpx.Request, status: int, reason: str) -> None:
        super().__init__(message, request=request)
        self.status = status
        self.reason = reason


class _NetworkStream(httpcore.AsyncNetworkStream):
    def __init__(self, carrier: TunnelStream | TlsStream, peer: TunnelPeer, tls: TlsStream | None = None) -> None:
        self._carrier = carrier
        self._peer = peer
        self._tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's API
        try:
            async with asyncio.timeout(timeout):
                return await self._carrier.read(max_bytes)
        except TimeoutError as e:
            raise httpcore.ReadTimeout(f"no data from {self._peer.target} within {timeout}s") from e
        except HboneError as e:
            raise httpcore.ReadError(f"tunnel to {self._peer.target}: {e}") from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._carrier.write(buffer)
                await self._carrier.drain()
        except TimeoutError as e:
            raise httpcore.WriteTimeout(f"tunnel to {self._peer.target} not writable within {timeout}s") from e
        except HboneError as e:
            raise httpcore.WriteError(f"tunnel to {self._peer.target}: {e}") from e

    async def aclose(self) -> None:
        try:
            self._carrier.write_eof()
        except HboneError:
            pass
        self._carrier.reset()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                tls = await TlsStream.client(self._carrier, ssl_context, server_hostname)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"TLS inside the tunnel to {self._peer.target} timed out") from e
        except HboneError as e:
            raise httpcore.ConnectError(f"TLS inside the tunnel to {self._peer.target}: {e}") from e
        return _NetworkStream(tls, self._peer, tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls.ssl_object if self._tls is not None else None
        if info == "peer_identity":
            return self._peer.identity
        if info in ("server_addr", "peername"):
            return self._peer.address
        return None


class _TunnelBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, mesh: TunnelOpener, via: str | None, identities: Sequence[str | SpiffeId]) -> None:
        self._mesh = mesh
        self._via = via
        self._identities = tuple(identities)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                carrier, peer = await self._mesh.open_tunnel(target, via=self._via, identities=self._identities)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"opening an HBONE tunnel to {target} timed out after {timeout}s") from e
        return _NetworkStream(carrier, peer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not reachable through the mesh")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request, close: Any) -> None:
        self._stream = stream
        self._request = request
        self._close = close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpcore.TimeoutException as e:
            raise httpx.ReadTimeout(str(e), request=self._request) from e
        except httpcore.NetworkError as e:
            raise httpx.ReadError(str(e), request=self._request) from e
        except httpcore.ProtocolError as e:
            raise httpx.RemoteProtocolError(str(e), request=self._request) from e

    async def aclose(self) -> None:
        await self._close()


class MeshTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=mesh.httpx_transport())`: every connection is an mTLS HBONE tunnel."""

    def __init__(
        self,
        mesh: TunnelOpener,
        *,
        http1: bool = True,
        http2: bool = False,
        via: str | None = None,
        identities: Sequence[str | SpiffeId] = (),
        **pool_options: Any,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            http1=http1, http2=http2, network_backend=_TunnelBackend(mesh, via, identities), **pool_options
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except ConnectRefused as e:
            raise MeshConnectError(
                f"HBONE tunnel to {_origin(request)} refused: {e}",
                request=request,
                status=e.status,
                reason=str(e),
            ) from e
        except HboneError as e:
            raise MeshConnectError(
                f"HBONE tunnel to {_origin(request)} failed: {e}",
                request=request,
                status=e.http_status,
                reason=str(e),
            ) from e
        except httpcore.TimeoutException as e:
            raise _httpx_error(e, httpx.TimeoutException)(str(e), request=request) from e
        except httpcore.NetworkError as e:
            raise _httpx_error(e, httpx.NetworkError)(str(e), request=request) from e
        except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
            raise _httpx_error(e, httpx.ProtocolError)(str(e), request=request) from e
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request, response.aclose),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _origin(request: httpx.Request) -> str:
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"{request.url.host}:{port}"


def _httpx_error(exc: Exception, fallback: type[httpx.TransportError]) -> type[httpx.TransportError]:
    """httpx names its exceptions after httpcore's (ReadTimeout, ConnectError, RemoteProtocolError, ...)."""
    found = getattr(httpx, type(exc).__name__, None)
    return found if isinstance(found, type) and issubclass(found, httpx.TransportError) else fallback
