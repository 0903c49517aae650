"""TunnelReader/TunnelWriter over an in-memory carrier: asyncio.StreamReader semantics, bounded line reads, and
closing that ends our side first and resets only a peer that never ends its own."""

from __future__ import annotations

import asyncio

import pytest

from hbone.mesh import streams
from hbone.mesh.streams import TunnelPeer, TunnelReader, TunnelWriter

PEER = TunnelPeer(None, ("127.0.0.1", 15008), "10.0.0.1:80")


class Carrier:
    """Delivers queued chunks, then EOF; records what is written and how the stream ended."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.written: list[bytes] = []
        self.eof_sent = False
        self.was_reset = False
        self.closed = asyncio.Event()

    async def read(self, n: int = -1) -> bytes:
        if not self.chunks:
            return b""
        head = self.chunks[0]
        take = head if n < 0 else head[:n]
        rest = head[len(take) :]
        if rest:
            self.chunks[0] = rest
        else:
            self.chunks.pop(0)
        return take

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        self.eof_sent = True

    def reset(self, code: int = 0x8) -> None:
        self.was_reset = True
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


async def test_reads_follow_asyncio_semantics() -> None:
    reader = TunnelReader(Carrier(b"line one\nline", b" two\nrest", b"!"))
    assert await reader.readline() == b"line one\n"
    assert [line async for line in reader] == [b"line two\n", b"rest!"]
    assert reader.at_eof() and await reader.read(10) == b""

    reader = TunnelReader(Carrier(b"abc", b"def"))
    assert await reader.read(2) == b"ab"
    assert await reader.readexactly(3) == b"cde"
    with pytest.raises(asyncio.IncompleteReadError) as short:
        await reader.readexactly(5)
    assert short.value.partial == b"f"

    reader = TunnelReader(Carrier(b"x" * 10, b"y" * 10))
    assert await reader.read() == b"x" * 10 + b"y" * 10  # n < 0: until EOF


async def test_readuntil_is_bounded_by_the_limit() -> None:
    reader = TunnelReader(Carrier(*[b"z" * 1000] * 10), limit=4096)
    with pytest.raises(asyncio.LimitOverrunError):
        await reader.readuntil(b"\r\n\r\n")
    sep_split = TunnelReader(Carrier(b"head\r", b"\n\r", b"\nbody"))
    assert await sep_split.readuntil(b"\r\n\r\n") == b"head\r\n\r\n"
    assert await sep_split.read() == b"body"


async def test_writer_extras_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    carrier = Carrier()
    writer = TunnelWriter(carrier, PEER)
    writer.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
    assert carrier.written == [b"abc"]
    assert writer.get_extra_info("hbone_target") == "10.0.0.1:80" and writer.get_extra_info("nope", 1) == 1
    assert writer.peer is PEER and writer.can_write_eof()

    # The peer ends its side: close() only sends END_STREAM.
    writer.close()
    assert carrier.eof_sent and writer.is_closing()
    carrier.closed.set()
    await asyncio.wait_for(writer.wait_closed(), 5)
    assert not carrier.was_reset

    # The peer never ends its side: after the linger the tunnel is reset.
    monkeypatch.setattr(streams, "CLOSE_LINGER", 0.01)
    stuck = Carrier()
    writer = TunnelWriter(stuck, PEER)
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)
    assert stuck.eof_sent and stuck.was_reset
