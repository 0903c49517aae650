"""Receive buffers shared by every protocol of one kind in a thread (`asyncio.BufferedProtocol.get_buffer`).

The event loop asks a buffered protocol for a buffer, reads into it and calls `buffer_updated` at once; a protocol
that is done with the bytes before `buffer_updated` returns (it parsed them, or copied what it keeps) never needs
the buffer between two reads, so one buffer per kind, size and thread replaces one per connection: 4 KiB for each
idle xDS client and 256 KiB for each tunnel connection or relayed TCP connection otherwise.

Kinds never share a buffer: a read of one kind never happens inside another's `buffer_updated` (the loop does not
nest reads), but keeping them apart makes that an assumption nobody has to check.
"""

from __future__ import annotations

import threading

_buffers = threading.local()


def shared_buffer(kind: str, size: int) -> memoryview:
    """The receive buffer of `size` bytes for protocols of `kind` in this thread (made on first use)."""
    views: dict[tuple[str, int], memoryview] | None = getattr(_buffers, "views", None)
    if views is None:
        views = _buffers.views = {}
    view = views.get((kind, size))
    if view is None:
        view = views[kind, size] = memoryview(bytearray(size))
    return view
