"""The HBONE client: open tunnels to HBONE servers over pooled mTLS HTTP/2 connections.

CONNECT mode sends ztunnel's request (`:method CONNECT`, `:authority`, `baggage`, `forwarded`, `traceparent`);
POST mode, for infrastructure that forwards only ordinary HTTP/2 requests, sends `POST` to the proxy with the real
target in `x-tun`, optionally running mTLS end to end inside the stream so the middle box sees only ciphertext.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from hbone.errors import ConnectionLost, ConnectRefused, HboneError, PeerIdentityError, TunnelError
from hbone.identity.spiffe import SpiffeId
from hbone.net.connection import H2Connection
from hbone.net.endpoints import connect
from hbone.net.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS, ConnectionPool, PoolKey
from hbone.net.settings import H2Settings
from hbone.net.stream import Stream
from hbone.net.tlsstream import ByteStream, TlsStream
from hbone.tls import MeshTls, check_server_in_trust_domain, check_server_peer
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.baggage import PeerMetadata
from hbone.wire.tracecontext import TraceParent, random_traceparent
from hbone.wire.tunnel_request import (
    TunnelMode,
    cached_authority,
    connect_request,
    parse_tunnel_response,
    post_request,
)

_MAX_ERROR_BODY = 1024
#: POST-mode paths (the Go project's era-A names): the stream carries plain TCP bytes, or mTLS end to end.
PLAIN_POST_PATH = "/_hbone/tcp"
INNER_MTLS_PATH = "/_hbone/mtls"
_SOME_TRACE = TraceParent("0" * 31 + "1", "0" * 15 + "1")  # stands in for the fresh one while headers are built


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach an HBONE server (one entry of a routing table)."""

    host: str
    port: int = 15008
    #: Server identities we accept (SAN check); empty accepts any identity the mesh roots vouch for.
    identities: tuple[str, ...] = ()
    #: The brief's `tun` label: CONNECT (default) or POST.
    mode: TunnelMode = TunnelMode.CONNECT
    #: POST mode: the `:authority` the middle box routes on (default host:port).
    proxy_authority: str | None = None
    #: POST mode: run mTLS inside the stream, verifying these identities end to end.
    inner_tls: bool = False
    inner_identities: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        address: str,
        *,
        identities: Sequence[str | SpiffeId] = (),
        post: bool = False,
        inner_tls: bool = False,
        proxy_authority: str | None = None,
    ) -> Endpoint:
        a = parse_authority(address)
        return cls(
            str(a.ip) if a.ip is not None else a.host,
            a.port,
            tuple(str(i) for i in identities),
            TunnelMode.POST if post else TunnelMode.CONNECT,
            proxy_authority,
            inner_tls,
        )


@dataclass
class Tunnel:
    """An open tunnel: a byte stream with half-close (`write_eof`) plus what the handshake told us."""

    stream: ByteStream
    h2: Stream
    status: int
    peer_identity: SpiffeId | None
    peer_metadata: PeerMetadata | None = None
    inner_identity: SpiffeId | None = None

    async def read(self, n: int = -1) -> bytes:
        return await self.stream.read(n)

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    async def drain(self) -> None:
        await self.stream.drain()

    def write_eof(self) -> None:
        self.stream.write_eof()

    def reset(self) -> None:
        self.h2.reset()

    @property
    def bytes_in(self) -> int:
        return self.h2.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.h2.bytes_out


class HboneClient:
    """Opens tunnels; owns a connection pool. `tls=None` speaks h2c (plaintext HBONE, trusted networks only)."""

    def __init__(
        self,
        tls: MeshTls | None,
        *,
        settings: H2Settings | None = None,
        metadata: PeerMetadata | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = 10.0,
        mark: int | None = None,
    ) -> None:
        self.tls = tls
        #: SO_MARK on every dial (needs CAP_NET_ADMIN), so capture rules skip our own HBONE connections by mark.
        self.mark = mark
        self.settings = settings or H2Settings.client()
        self.metadata = metadata
        self.connect_timeout = connect_timeout
        self.pool = ConnectionPool(self._dial, max_streams=max_streams, idle_timeout=idle_timeout)
        # Per live connection, forgotten with it (an id()-keyed dict grew by one entry per connection ever made).
        self._peers: weakref.WeakKeyDictionary[object, SpiffeId | None] = weakref.WeakKeyDictionary()
        self._keys: dict[Endpoint, tuple[object, PoolKey]] = {}
        # The last request's inputs and its headers before and after the traceparent (`_request`).
        self._memo: tuple[tuple[object, ...], list[tuple[str, str]], list[tuple[str, str]]] | None = None

    @property
    def identity(self) -> SpiffeId | None:
        return self.tls.manager.identity if self.tls is not None else None

    def _key(self, ep: Endpoint) -> PoolKey:
        # Remembered per endpoint and certificate: `identity` parses the certificate's SAN on every access, which
        # was ~2% of the churn client's CPU. A rotated certificate is a new `current` object, hence a new key.
        current = self.tls.manager.current if self.tls is not None else None
        hit = self._keys.get(ep)
        if hit is not None and hit[0] is current:
            return hit[1]
        extra = f"{ep.mode.value}|{ep.proxy_authority or ''}"
        key = PoolKey(str(self.identity or ""), tuple(sorted(ep.identities)), ep.host, ep.port, extra)
        if len(self._keys) >= 1024:
            self._keys.clear()
        self._keys[ep] = (current, key)
        return key

    async def _dial(self, key: PoolKey) -> H2Connection:
        ctx = self.tls.client_context() if self.tls is not None else None
        try:
            sock = await self._marked_socket(key.host, key.port) if self.mark is not None else None
            conn = await connect(
                None if sock else key.host,
                None if sock else key.port,
                ssl=ctx,
                settings=self.settings,
                server_hostname="" if ctx else None,
                sock=sock,
                connect_timeout=self.connect_timeout,
            )
        except ConnectionLost as e:
            cause = e.__cause__
            if isinstance(cause, ssl.SSLError):
                detail = getattr(cause, "verify_message", None) or cause.reason or str(cause)
                raise PeerIdentityError(f"TLS handshake with {key.host}:{key.port} failed: {detail}") from cause
            if isinstance(cause, TimeoutError):
                raise ConnectionLost(
                    f"connecting to HBONE server {key.host}:{key.port} timed out after {self.connect_timeout}s "
                    "(is a firewall or NetworkPolicy blocking the HBONE port?)"
                ) from cause
            if isinstance(cause, OSError):
                raise ConnectionLost(
                    f"cannot connect to HBONE server {key.host}:{key.port}: {cause.strerror or cause}"
                ) from cause
            raise
        if ctx is not None:
            try:
                self._peers[conn] = self._check_server(conn, key.dst)
            except PeerIdentityError:
                await conn.close()
                raise
        return conn

    async def _marked_socket(self, host: str, port: int) -> socket.socket:
        """A TCP socket carrying SO_MARK, connected (non-blocking) to host:port; errors as `connect` raises them."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                family, _, _, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark or 0)
                    await loop.sock_connect(sock, addr)
                except BaseException:
                    sock.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc!r}") from exc
        return sock

    async def open(
        self,
        target: str | Authority,
        endpoint: Endpoint,
        *,
        forwarded_for: str | None = None,
        forwarded_host: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> Tunnel:
        """Open a tunnel to `target` (ip:port or host:port) through the HBONE server at `endpoint`."""
        tgt = target if isinstance(target, Authority) else cached_authority(target)
        headers = self._request(tgt, endpoint, forwarded_for, forwarded_host, extra_headers)
        key = self._key(endpoint)
        conn = await self.pool.connection(key)
        stream = await conn.open_stream(headers)
        try:
            raw = await stream.response_headers()
            resp = parse_tunnel_response(raw)
            if not resp.ok:
                body = await _read_some(stream, _MAX_ERROR_BODY)
                stream.reset()
                raise ConnectRefused(resp.status, body.decode("utf-8", "replace").strip())
            tunnel = Tunnel(stream, stream, resp.status, self.peer_identity(conn), resp.peer)
            if endpoint.inner_tls:
                await self._inner_tls(tunnel, endpoint)
            return tunnel
        except BaseException:
            with contextlib.suppress(HboneError):
                stream.reset()
            raise

    def _request(
        self,
        tgt: Authority,
        endpoint: Endpoint,
        forwarded_for: str | None,
        forwarded_host: str | None,
        extra: Sequence[tuple[str, str]],
    ) -> list[tuple[str, str]]:
        """The request headers with a fresh traceparent. Everything else is built once for as long as the caller
        asks with the same values (hbone forward: one target, one endpoint): building and checking them was ~4%
        of `hbone forward`'s Python per tunnel."""
        inputs = (tgt, endpoint, forwarded_for, forwarded_host, extra, self.metadata)
        memo = self._memo
        if memo is None or memo[0] != inputs or not isinstance(extra, tuple):
            if endpoint.mode is TunnelMode.POST:
                path = INNER_MTLS_PATH if endpoint.inner_tls else PLAIN_POST_PATH
                built = post_request(
                    tgt, endpoint.proxy_authority or f"{endpoint.host}:{endpoint.port}", path, baggage=self.metadata,
                    forwarded_for=forwarded_for, traceparent=_SOME_TRACE, extra=extra,
                )  # fmt: skip
            else:
                built = connect_request(
                    tgt, baggage=self.metadata, forwarded_for=forwarded_for, forwarded_host=forwarded_host,
                    traceparent=_SOME_TRACE, extra=extra,
                )  # fmt: skip
            at = built.index(("traceparent", str(_SOME_TRACE)))
            memo = self._memo = (inputs, built[:at], built[at + 1 :])
        return [*memo[1], ("traceparent", random_traceparent()), *memo[2]]

    async def _inner_tls(self, tunnel: Tunnel, endpoint: Endpoint) -> None:
        if self.tls is None:
            raise TunnelError("inner mTLS needs a workload certificate (no --certs given)")
        inner = await TlsStream.client(tunnel.h2, self.tls.client_context())
        expected = endpoint.inner_identities or endpoint.identities
        if expected:
            tunnel.inner_identity = check_server_peer(inner.ssl_object, expected)
        else:
            tunnel.inner_identity = check_server_in_trust_domain(inner.ssl_object, self.tls.trust_domain)
        tunnel.stream = inner

    def _check_server(self, conn: H2Connection, expected: tuple[str, ...]) -> SpiffeId:
        """The server must present one of `expected`; an endpoint that names none (a library caller's choice,
        never a config's: those require identities) accepts only identities of our own trust domain."""
        if expected or self.tls is None:
            return check_server_peer(conn.ssl_object, expected)
        return check_server_in_trust_domain(conn.ssl_object, self.tls.trust_domain)

    def peer_identity(self, conn: object) -> SpiffeId | None:
        """The verified identity of the HBONE server on `conn` (None for h2c)."""
        return self._peers.get(conn)

    async def close(self) -> None:
        await self.pool.close()


async def _read_some(stream: Stream, limit: int) -> bytes:
    buf = b""
    with contextlib.suppress(HboneError, TimeoutError):
        while len(buf) < limit:
            chunk = await asyncio.wait_for(stream.read(limit - len(buf)), 2)
            if not chunk:
                break
            buf += chunk
    return buf
