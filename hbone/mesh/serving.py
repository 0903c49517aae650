"""`MeshServer`: HBONE tunnels terminated in process and handed to an application handler.

The inbound rules are the node proxy's (`hbone.proxy.inbound.InboundHandler`: request validation, authorization,
access records, ztunnel's status codes); only the end differs — instead of dialling an upstream, an admitted
tunnel is answered 200 and given to `handler(reader, writer)` with the caller's verified identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import cast

from hbone.errors import BadRequest, HboneError
from hbone.mesh.streams import TunnelPeer, TunnelReader, TunnelWriter
from hbone.net.stream import Stream
from hbone.proxy.enforcing import EnforcingInbound
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import INNER_MTLS_PATH, Authorizer, InboundConfig, InboundHandler
from hbone.server import HboneServer, PeerInfo
from hbone.state import MeshSnapshot, MeshState, StateChange
from hbone.tls import MeshTls
from hbone.wire.authority import Authority
from hbone.wire.baggage import PeerMetadata
from hbone.wire.tunnel_request import TunnelMode, parse_tunnel_request, tunnel_response

log = logging.getLogger("hbone.mesh")

#: `await handler(reader, writer)` per admitted tunnel; `writer.peer` says who called and for which target.
TunnelHandler = Callable[[TunnelReader, TunnelWriter], Awaitable[None]]

__all__ = ["MeshServer", "TunnelHandler"]


class _AppInbound(InboundHandler):
    """Inbound rules of the node proxy; admitted tunnels go to the application instead of an upstream socket."""

    def __init__(self, config: InboundConfig, handler: TunnelHandler) -> None:
        super().__init__(config)
        self._handler = handler

    async def handle_stream(self, stream: Stream, peer: PeerInfo, guard: TunnelGuard) -> None:
        record = guard.record
        req = parse_tunnel_request(stream.request_headers)
        record.mode, record.dst_addr = req.mode.value, str(req.target)
        if req.mode is TunnelMode.POST and req.path == INNER_MTLS_PATH:
            raise BadRequest("inner mTLS (POST /_hbone/mtls) is not served by an in-process mesh server")
        await self.admit(req, peer, record)
        stream.send_headers(tunnel_response(200, peer=self.config.response_baggage))
        guard.answered(200)
        caller = TunnelPeer(peer.identity, peer.address, str(req.target), req.forwarded_for, req.baggage)
        writer = TunnelWriter(stream, caller)
        reader = TunnelReader(stream)
        try:
            await self._handler(reader, writer)
        except HboneError:
            raise  # the guard resets the stream and records it as broken
        except Exception as e:  # an application bug must not take the listener down
            log.exception("tunnel handler failed for %s from %s", req.target, peer.identity)
            writer.abort()
            guard.finish(200, f"handler failed: {e!r}")
            return
        finally:
            record.bytes_sent, record.bytes_received = stream.bytes_in, stream.bytes_out
            writer.close()


class MeshServer:
    """An HBONE listener of a `Mesh` (returned by `Mesh.serve` / `Mesh.serve_asgi`); `await server.close()`."""

    def __init__(
        self,
        tls: MeshTls,
        handler: TunnelHandler,
        authorize: Authorizer,
        *,
        namespace: str = "",
        state: MeshState | None = None,
        metadata: PeerMetadata | None = None,
    ) -> None:
        """With `state`, tunnels are decided by its current snapshot (`authorize` is not used) and a policy change
        closes the open tunnels it now denies, as the node agent does."""
        self._local_host = "0.0.0.0"
        config = InboundConfig(
            authorize=authorize,
            namespace=namespace,
            response_baggage=metadata,
            tls=tls,
            resolve=self._resolve,
            # Nothing is dialled, so there is no loop to a port of ours to refuse.
            own_ports=frozenset(),
        )
        self.inbound = _AppInbound(config, handler)
        self._enforcing: EnforcingInbound | None = None
        self._unsubscribe: Callable[[], None] | None = None
        if state is not None:
            self._enforcing = EnforcingInbound(state, config, lambda c: _AppInbound(c, handler))
            self.inbound = cast(_AppInbound, self._enforcing.handler)
            self._unsubscribe = state.subscribe(self._on_change)
        inbound = self._enforcing or self.inbound
        self._server = HboneServer(tls, inbound)
        self._address: tuple[str, int] | None = None
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        self._closed = asyncio.Event()

    def _on_change(self, change: StateChange, snap: MeshSnapshot) -> None:
        if self._enforcing is not None and (change.policies or change.workloads):
            self._enforcing.recheck(snap)

    @property
    def late_rejections(self) -> int:
        """Open tunnels closed because a later policy denied them (xDS authorization only)."""
        return self._enforcing.late_rejections if self._enforcing is not None else 0

    async def _resolve(self, target: Authority) -> tuple[str, int]:
        # The destination authorization sees: the target IP as asked, or (a service hostname) our listen address.
        return (str(target.ip) if target.ip is not None else self._local_host), target.port

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind host:port (port 0: ephemeral) with the mesh's mTLS context; returns the bound address."""
        self._local_host = host
        self._address = await self._server.listen(host, port)
        return self._address

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), e.g. the ephemeral port chosen for port 0."""
        if self._address is None:
            raise RuntimeError("the server is not listening")
        return self._address

    @property
    def tunnels(self) -> int:
        """Tunnels admitted or refused so far."""
        return self.inbound.total

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after the listener closed (e.g. the ASGI lifespan shutdown)."""
        self._on_close.append(callback)

    async def drain(self, deadline: float | None = None) -> None:
        """Stop accepting, GOAWAY every connection, let running tunnels finish until `deadline` seconds."""
        await self._server.drain(deadline)

    async def close(self) -> None:
        """Stop listening and abort open tunnels (use `drain()` first for a graceful end)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self._server.close()
        for callback in self._on_close:
            with contextlib.suppress(Exception):
                await callback()

    async def serve_forever(self) -> None:
        """Wait until the server is closed."""
        await self._closed.wait()

    async def __aenter__(self) -> MeshServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
