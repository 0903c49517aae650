"""Authorization that follows mesh state: every tunnel is decided with the current snapshot, and a policy change
closes the admitted tunnels it now denies (ztunnel's `AuthorizationPolicyLateRejection`, docs/istio.md §4).

Used by the node agent's inbound listeners and by the in-process mesh server (`hbone.Mesh.serve` with xDS).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable

from hbone.authz.engine import Decision
from hbone.authz.model import Connection
from hbone.errors import HboneError
from hbone.net.stream import Stream
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import PeerInfo
from hbone.state import MeshSnapshot, MeshState

log = logging.getLogger("hbone.inbound")

_current: contextvars.ContextVar[Stream] = contextvars.ContextVar("hbone_inbound_stream")


class EnforcingInbound:
    """Wraps an `InboundHandler` (built by `handler_factory` from `config`): decides with the current snapshot and
    remembers every admitted connection, so `recheck(snapshot)` can close the ones a new snapshot denies."""

    def __init__(
        self,
        state: MeshState,
        config: InboundConfig,
        handler_factory: Callable[[InboundConfig], InboundHandler] = InboundHandler,
    ) -> None:
        self.state = state
        config.authorize = self.authorize
        self.handler = handler_factory(config)
        self.open: dict[Stream, Connection] = {}
        self.late_rejections = 0
        self.denied = 0

    def authorize(self, conn: Connection) -> Decision:
        decision = self.state.snapshot().authorize(conn)
        if not decision.allowed:
            self.denied += 1
        elif (stream := _current.get(None)) is not None:
            self.open[stream] = conn  # `authorize` runs inside the stream's handler, in its context
        return decision

    async def __call__(self, stream: Stream, peer: PeerInfo) -> None:
        token = _current.set(stream)
        try:
            await self.handler(stream, peer)
        finally:
            _current.reset(token)
            self.open.pop(stream, None)

    def add_own_address(self, host: str, port: int) -> None:
        """The listener's bound address, for the wrapped handler's self-call guard (`HboneServer.listen`)."""
        self.handler.add_own_address(host, port)

    def recheck(self, snap: MeshSnapshot) -> int:
        """Reset every open tunnel `snap` denies; returns how many."""
        closed = 0
        for stream, conn in list(self.open.items()):
            decision = snap.authorize(conn)
            if not decision.allowed:
                log.info("closing %s -> %s:%d: %s", conn.src_identity, conn.dst_ip, conn.dst_port, decision.reason)
                with contextlib.suppress(HboneError):
                    stream.reset()
                self.open.pop(stream, None)
                closed += 1
        self.late_rejections += closed
        return closed
