"""The send side of one stream: queued bytes, the queued end, and the writers waiting for room.

`Stream.write`/`write_eof`/`send_trailers` fill it; the connection's `SendScheduler` drains it into the engine as
the peer's windows allow (`take`), so neither reaches into the other's fields.
"""

from __future__ import annotations

import asyncio
from collections import deque

Header = tuple[bytes, bytes]


class Outbox:
    """A stream's send side: bytes queued for the owner's send scheduler, the queued end, the writers waiting.

    Written by the `Stream` (queue, end) and drained by the scheduler (`take`, `ended`, `sent`).
    """

    __slots__ = ("chunks", "end_queued", "ended", "low", "sent", "size", "trailers", "waiters")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0  # bytes in `chunks`
        self.end_queued = False  # END_STREAM (or trailers) goes out after the queued bytes
        self.trailers: list[Header] | None = None
        self.ended = False  # our END_STREAM went out (or our side was stopped)
        self.sent = 0  # bytes handed to the engine
        self.waiters: list[asyncio.Future[None]] = []  # drain() / drained() callers
        self.low = 0  # the waiters are woken once at most this many bytes are queued (`wait`)

    def put(self, chunk: bytes | memoryview) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def own(self, view: memoryview) -> None:
        """Copy what is still queued of `view`, the last chunk put, whose buffer its writer may now reuse. Chunks
        leave from the front, so a remainder of it can only be the last chunk (`take` slices it there)."""
        chunks = self.chunks
        if chunks:
            last = chunks[-1]
            if isinstance(last, memoryview) and last.obj is view.obj:
                chunks[-1] = last.tobytes()

    def take(self, n: int) -> list[bytes | memoryview]:
        """The first `n` queued bytes (at least that many are queued) as buffers, removed; a write split across
        frames is cut with memoryview slices (no quadratic re-copying of its remainder)."""
        queue = self.chunks
        pieces: list[bytes | memoryview] = []
        self.size -= n
        self.sent += n
        while n:
            chunk = queue[0]
            size = len(chunk)
            if size <= n:
                pieces.append(queue.popleft())
                n -= size
            else:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                pieces.append(view[:n])
                queue[0] = view[n:]
                n = 0
        return pieces

    def discard(self) -> None:
        """Drop what is queued (the stream broke, or the peer asked us to stop sending)."""
        self.chunks.clear()
        self.size = 0

    def wait(self, fut: asyncio.Future[None], low: int) -> None:
        """Resolve `fut` once at most `low` bytes are queued (or the stream broke); the lowest level asked wins."""
        self.low = min(self.low, low) if self.waiters else low
        self.waiters.append(fut)

    def wake(self) -> None:
        """Wake every writer waiting in drain() / drained()."""
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters.clear()
