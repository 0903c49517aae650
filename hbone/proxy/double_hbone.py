"""Double HBONE, the client side: one path for the front ends' `double_hbone` routes and the mesh outbound.

The outer tunnel goes to a network gateway with the target's authority (`svc-fqdn:port`); inside its stream we
run a fresh mTLS handshake and HTTP/2 connection end to end with the target workload (never pooled, like
ztunnel), verify the workload's identity, and CONNECT the same authority again with `x-forwarded-network`
(docs/hbone-spec.md). The inner TLS runs over the outer stream in memory (`TlsStream`), the inner HTTP/2 over
that (`connect_over`): no socketpair and no relay task between the two tunnels.

The inner connection carries exactly one stream, so it lives as long as that stream: once the inner stream has
finished (or `close()` was called) the inner connection closes (GOAWAY, close_notify, END_STREAM on the outer
stream) and the outer stream is reset if the gateway has not finished it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from hbone.client import Endpoint, HboneClient, Tunnel
from hbone.errors import ConnectRefused, HboneError, TunnelError
from hbone.grpc.transport import connect_over  # the h2-over-a-byte-stream adapter
from hbone.identity.spiffe import SpiffeId
from hbone.net.connection import H2Connection
from hbone.net.stream import Stream
from hbone.net.tlsstream import TlsStream
from hbone.tls import check_server_peer
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.tracecontext import TraceParent
from hbone.wire.tunnel_request import connect_request, parse_tunnel_response

_CLOSERS: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


class DoubleTunnel:
    """The inner tunnel: `stream` carries the application bytes, end to end with the target workload."""

    def __init__(self, stream: Stream, inner_identity: SpiffeId, outer: Tunnel, conn: H2Connection) -> None:
        self.stream = stream
        self.inner_identity = inner_identity
        self.outer_identity = outer.peer_identity
        self._outer = outer
        self._conn = conn
        self._closer = asyncio.get_running_loop().create_task(self._close_when_done())
        _CLOSERS.add(self._closer)
        self._closer.add_done_callback(_CLOSERS.discard)

    async def _close_when_done(self) -> None:
        try:
            await self.stream.wait_closed()
        finally:
            with contextlib.suppress(HboneError, OSError):
                await self._conn.close()
            self._outer.reset()  # a no-op once the gateway finished the outer stream

    async def close(self) -> None:
        """Reset the inner stream if it is still open, then wait until the inner connection and outer tunnel are
        closed."""
        self.stream.reset()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._closer)


async def open_inner(
    client: HboneClient,
    outer: Tunnel,
    target: Authority,
    inner_identities: Sequence[str | SpiffeId],
    *,
    network: str | None = None,
    forwarded_for: str | None = None,
    forwarded_host: str | None = None,
) -> DoubleTunnel:
    """mTLS + CONNECT `target` inside the already open `outer` tunnel; `outer` is reset if this fails."""
    try:
        if client.tls is None:
            raise TunnelError("double HBONE needs a workload certificate for the inner mTLS")
        inner = await TlsStream.client(outer.stream, client.tls.client_context())
        inner_identity = check_server_peer(inner.ssl_object, inner_identities)
        conn = await connect_over(inner, client.settings, ssl_object=inner.ssl_object)  # the end-to-end peer
    except BaseException:
        outer.reset()
        raise
    try:
        headers = connect_request(
            target,
            baggage=client.metadata,
            forwarded_for=forwarded_for,
            forwarded_host=forwarded_host,
            traceparent=TraceParent.generate(),
            forwarded_network=network,
        )
        stream = await conn.open_stream(headers)
        resp = parse_tunnel_response(await stream.response_headers())
        if not resp.ok:
            stream.reset()
            raise ConnectRefused(resp.status, "inner CONNECT refused by the target workload")
    except BaseException:
        conn.abort()
        outer.reset()
        raise
    return DoubleTunnel(stream, inner_identity, outer, conn)


async def open_double_hbone(
    client: HboneClient,
    gateway: Endpoint,
    target: str | Authority,
    inner_identities: Sequence[str | SpiffeId],
    *,
    network: str | None = None,
    forwarded_for: str | None = None,
    forwarded_host: str | None = None,
) -> DoubleTunnel:
    """Outer CONNECT `target` via `gateway`, then mTLS + CONNECT `target` inside it (`x-forwarded-network`)."""
    if client.tls is None:
        raise TunnelError("double HBONE needs a workload certificate for the inner mTLS")
    tgt = target if isinstance(target, Authority) else parse_authority(target)
    outer = await client.open(tgt, gateway, forwarded_for=forwarded_for, forwarded_host=forwarded_host)
    return await open_inner(
        client,
        outer,
        tgt,
        inner_identities,
        network=network,
        forwarded_for=forwarded_for,
        forwarded_host=forwarded_host,
    )
