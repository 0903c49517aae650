"""Serve an ASGI application over HBONE tunnels with hypercorn's protocol layer (needs the `asgi` extra).

Each admitted tunnel is one HTTP connection. Hypercorn's `ProtocolWrapper` (h11 for HTTP/1.1, h2 for HTTP/2,
switching on the HTTP/2 preface for prior-knowledge clients) parses requests and drives the app; this module only
moves bytes between it and the tunnel — the same job hypercorn's own asyncio `TCPServer` does for a socket, which
we cannot reuse because it reads addresses from the socket object. Why hypercorn and not uvicorn: uvicorn's
protocols are `asyncio.Protocol`s bound to a transport and speak HTTP/1.1 only; hypercorn's are sans-IO event
handlers and speak HTTP/2 as well, which tunnels from HTTP/2 clients (httpx, Envoy, gRPC-web) need.

The app sees the caller in `scope["extensions"]["hbone"]`: `{"peer_identity": "spiffe://…" or None,
"peer_address": (host, port), "target": "host:port", "forwarded_for": "ip:port" or None, "baggage": {...}}`
(`forwarded_for` from the CONNECT's `forwarded` header, the original client when a proxy or waypoint opened the
tunnel; `baggage` the caller's workload metadata). Lifespan events run once per server (startup before the
listener opens, shutdown when it closes), as under hypercorn itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.typing import ConnectionState

from hbone.errors import HboneError, ProtocolError
from hbone.mesh.streams import TunnelReader, TunnelWriter
from hbone.wire.authority import parse_authority

__all__ = ["AsgiHandler"]

_MAX_RECV = 2**16


class AsgiHandler:
    """A `TunnelHandler` serving `app`. Keywords set `hypercorn.config.Config` attributes."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.app = app
        self.config = Config()
        for key, value in config.items():
            if not hasattr(self.config, key):
                raise TypeError(f"unknown hypercorn setting {key!r}")
            setattr(self.config, key, value)
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}
        self._lifespan: Lifespan | None = None
        self._lifespan_task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's lifespan startup (apps without lifespan support are served anyway)."""
        loop = asyncio.get_running_loop()
        self._lifespan = Lifespan(ASGIWrapper(self.app), self.config, loop, self._state)
        self._lifespan_task = loop.create_task(self._lifespan.handle_lifespan())
        await self._lifespan.wait_for_startup()

    async def shutdown(self) -> None:
        if self._lifespan is None or self._lifespan_task is None:
            return
        try:
            await self._lifespan.wait_for_shutdown()
        finally:
            self._lifespan_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._lifespan_task
            self._lifespan = self._lifespan_task = None

    async def __call__(self, reader: TunnelReader, writer: TunnelWriter) -> None:
        peer = writer.peer
        extension = {
            "peer_identity": str(peer.identity) if peer.identity is not None else None,
            "peer_address": peer.address,
            "target": peer.target,
            "forwarded_for": peer.forwarded_for,
            "baggage": dict(peer.baggage),
        }
        app = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions["hbone"] = extension
            await app({**scope, "extensions": extensions}, receive, send)

        await _Connection(self, ASGIWrapper(with_peer), reader, writer).run()


class _Connection:
    """One tunnel as one HTTP connection: bytes in → protocol events; protocol events → bytes out."""

    def __init__(self, owner: AsgiHandler, app: ASGIWrapper, reader: TunnelReader, writer: TunnelWriter) -> None:
        self._owner = owner
        self._app = app
        self._reader = reader
        self._writer = writer
        self._idle = True
        self._closed = False
        self._protocol: ProtocolWrapper | None = None

    async def run(self) -> None:
        config = self._owner.config
        target = self._writer.peer.target
        try:
            addr = parse_authority(target)  # the tunnel's target, as the inbound checked it
            server: tuple[str, int] | None = (addr.host, addr.port)
        except ProtocolError:
            server = None
        async with TaskGroup(asyncio.get_running_loop()) as task_group:
            self._protocol = ProtocolWrapper(
                self._app,
                config,
                self._owner._context,
                task_group,
                ConnectionState(self._owner._state.copy()),
                False,  # the tunnel is mTLS, but the HTTP inside it is plaintext (http:// URLs)
                self._writer.peer.address,
                server,
                self._send,
                "http/1.1",  # h11 first; the HTTP/2 preface switches to h2 (prior knowledge)
            )
            await self._protocol.initiate()
            await self._read_loop()
        self._close()

    async def _read_loop(self) -> None:
        assert self._protocol is not None
        config = self._owner.config
        while not self._closed:
            timeout = config.keep_alive_timeout if self._idle else config.read_timeout
            try:
                data = await asyncio.wait_for(self._reader.read(_MAX_RECV), timeout)
            except (HboneError, TimeoutError):
                break
            if not data:
                break
            await self._protocol.handle(RawData(data))
        await self._protocol.handle(Closed())

    async def _send(self, event: Event) -> None:
        if isinstance(event, RawData):
            try:
                self._writer.write(event.data)
                await self._writer.drain()
            except HboneError:
                assert self._protocol is not None
                await self._protocol.handle(Closed())
        elif isinstance(event, Closed):
            self._close()
        elif isinstance(event, Updated):
            self._idle = event.idle

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
