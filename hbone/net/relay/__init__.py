"""Joining two byte ends: `relay(downstream, upstream) -> RelayResult` (see `core.py`)."""

from hbone.net.relay.core import End, TcpEnd, relay, start_server
from hbone.net.relay.pipe import AcceptedPipe, TcpPipe, open_pipe
from hbone.net.relay.result import DOWNSTREAM, IDLE_TIMEOUT, UPSTREAM, IdleTimeout, RelayResult, Side

__all__ = [
    "DOWNSTREAM",
    "IDLE_TIMEOUT",
    "UPSTREAM",
    "AcceptedPipe",
    "End",
    "IdleTimeout",
    "RelayResult",
    "Side",
    "TcpEnd",
    "TcpPipe",
    "open_pipe",
    "relay",
    "start_server",
]
