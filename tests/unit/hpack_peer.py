"""The receiving side of our HPACK encoder, for its tests and fuzz harness: `hpack`'s decoder (h2's) with the
SETTINGS_HEADER_TABLE_SIZE the peer allows, and our own decoder. `decode` requires both to agree and the peer's
dynamic table to equal the encoder's model of it, within what the peer allows and our own 4096-byte limit."""

from __future__ import annotations

import hpack
from hpack import NeverIndexedHeaderTuple

from hbone.net.h2.native_hpack import Encoder, HeaderCodec

Block = list[tuple[bytes, bytes]]
#: Fields our encoder never indexes, by name (besides any NeverIndexedHeaderTuple).
SENSITIVE = (b"authorization", b"proxy-authorization", b"cookie", b"set-cookie")


class Peer:
    def __init__(self) -> None:
        self.hpack = hpack.Decoder(max_header_list_size=1 << 24)
        self.ours = HeaderCodec(1 << 24, huffman=False)
        self.sent_plain: set[tuple[bytes, bytes]] = set()  # fields sent as plain tuples so far

    def allow(self, size: int, encoder: Encoder) -> None:
        # The peer enforces a new maximum from its SETTINGS' ACK on; our ACK goes out before our next block.
        self.hpack.max_allowed_table_size = size
        encoder.set_table_size(size)

    def decode(self, data: bytes, encoder: Encoder) -> Block:
        got = list(self.hpack.decode(data, raw=True))
        assert self.ours.decode(data) == got
        entries, size, maximum = encoder.dynamic_table()
        assert list(self.hpack.header_table.dynamic_entries) == entries
        assert self.hpack.header_table_size == maximum <= min(self.hpack.max_allowed_table_size, 4096)
        assert size == sum(len(n) + len(v) + 32 for n, v in entries) <= maximum
        return got

    def check(self, block: Block, encoder: Encoder) -> None:
        """Encode `block`, decode it on both decoders: the same fields, never-indexed exactly where they must be
        (a `NeverIndexedHeaderTuple` of a field sent before as a plain tuple may take that one's representation:
        `Encoder`'s docstring says why)."""
        got = self.decode(encoder.encode(block), encoder)
        assert got == block, (got, block)
        for sent, received in zip(block, got, strict=True):
            flagged = isinstance(sent, NeverIndexedHeaderTuple)
            never = sent[0] in SENSITIVE or (flagged and (sent[0], sent[1]) not in self.sent_plain)
            if not flagged:
                self.sent_plain.add(sent)
            if never or not flagged:
                assert isinstance(received, NeverIndexedHeaderTuple) == never, sent
