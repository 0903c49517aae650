"""HPACK (RFC 7541) for the native engine: our own encoder with a dynamic table, and a decoder over `hpack`'s table.

The codec keeps one encoder and one decoder per connection with our limits (the decoder's header list limit is
twice what we advertise, as the driver had it with h2: a request a little over the limit gets a 431 on its
stream from the driver, only a grossly oversized block costs the connection). Decoding errors are connection
errors as in h2: an oversized list is ENHANCE_YOUR_CALM, anything else PROTOCOL_ERROR. What a received block may
contain (RFC 9113 §8.2-8.3) is checked in `native_headers`.

Which fields the encoder adds to the peer's dynamic table (the rule `docs/h2-engine.md` states for users):
- never indexed (§6.2.3, so no intermediary indexes them either): `authorization`, `proxy-authorization`,
  `cookie`, `set-cookie` (credentials: a dynamic table shared by requests lets a party that can add fields
  guess them by the block's size, as CRIME did), and every `NeverIndexedHeaderTuple`;
- literals without indexing: fields whose value is new on almost every request (the tracing ids `traceparent`,
  `tracestate`, `x-request-id`, B3; and nghttp2's list, which Envoy uses: `grpc-timeout`, `content-length`,
  dates, validators, `location`), and fields over a quarter of the table (one would evict most of what repeats);
- indexed (§6.2.1) the second time they are sent, if no more than 64 other new fields came between: everything
  else, pseudo-headers included (`:method CONNECT`, the `:authority` of a destination, a gRPC method's `:path`),
  `baggage`, `content-type`, `te`, `user-agent`, ... A field sent once is a literal: a client that opens tunnels
  to ever new destinations pays neither an insertion per tunnel nor the eviction of the fields that do repeat.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from hpack import HPACKError, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from hbone.errors import H2ErrorCode
from hbone.net.h2.api import HeaderList
from hbone.net.h2.native_frames import conn_error

# RFC 7541 Appendix A: the static table, by full field and by name (first index wins, as in hpack).
_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, _field in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault(_field, _i)
    _STATIC_NAME.setdefault(_field[0], _i)
_STATIC = HeaderTable.STATIC_TABLE
_MAX_TABLE = 4096  # the dynamic table size the peer may use (the protocol default; h2 allowed the same)
_ENCODER_TABLE = 4096  # the most our encoder keeps, whatever the peer allows: bounds our memory per connection
_CACHE_LIMIT = 256  # encoded fields remembered per connection (the cache restarts when full) ...
_CACHE_FIELD = 128  # ... as literals, each of at most this many bytes of name and value (baggage is ~90)
_SEEN_LIMIT = 64  # fields remembered as sent once (the set restarts when full): a field is indexed when it comes
# back before 64 other new ones, so a stream of one-off values (say, 1,000 destinations in turn) costs neither
# insertions nor the table's useful entries
_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})
# Values new on every request (tracing ids): neither indexed nor cached.
_UNIQUE_NAMES = frozenset(
    {b"traceparent", b"tracestate", b"x-request-id", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"b3"}
)
# Values that change often (nghttp2's list, which Envoy uses, plus the above): literals, cached when small.
_NOT_INDEXED = frozenset(
    {
        *_UNIQUE_NAMES,
        *(b"grpc-timeout", b"content-length", b"age", b"date", b"etag", b"last-modified", b"location"),
        *(b"if-modified-since", b"if-none-match"),
    }
)
_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode


class Encoder:
    """Our HPACK encoder: the static table, a dynamic table with the rule above, and a cache of encodings.

    A field found whole in a table is one index (one byte for the static table and the newest 65 dynamic
    entries); a field to index is a literal with incremental indexing, its name from a table when either has it.
    The dynamic table is a FIFO of entries with absolute insertion numbers, plus dicts from field and from name to
    the newest number, so a lookup is one dict access and an index is arithmetic (RFC 7541 §2.3.3: the newest
    entry is 62). Its size never exceeds the smaller of the peer's SETTINGS_HEADER_TABLE_SIZE and our own limit;
    a change is announced at the start of the next block (§4.2: the smallest size since the last block first, then
    the final one).

    Every field's encoding is cached per connection, so a block whose fields were all seen costs one dict lookup
    per field, where hpack searched its tables, logged and updated the dynamic table for every field (~17% of a
    tunnel's CPU per side). An index is only valid until the next insertion, so the cached indexes are dropped at
    every insertion (which happens only on a miss); tracing ids and big fields are not cached (their values do not
    repeat). A `NeverIndexedHeaderTuple` is never cached (it compares equal to the plain tuple of its field, which
    must not get its representation) and is sent never-indexed, unless the plain tuple of the same field is in the
    cache: the cache matches by value, and a check of every field's class on the hot path cost 10-40% of a block's
    encoding time. Such a field was sent before on this connection, indexed or as a literal, so never-indexing it
    now would hide nothing. The driver's API makes plain tuples only; never-indexed names are never indexed.
    """

    __slots__ = (
        "_cache",
        "_entries",
        "_fields",
        "_huffman",
        "_indexes",
        "_inserted",
        "_max",
        "_names",
        "_seen",
        "_size",
        "_update",
    )

    def __init__(self, huffman: bool) -> None:
        self._huffman = huffman
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        self._indexes: list[tuple[bytes, bytes]] = []  # cache keys whose encoding is a dynamic index
        self._entries: deque[tuple[tuple[bytes, bytes], int]] = deque()  # (field, size), oldest first
        self._fields: dict[tuple[bytes, bytes], int] = {}  # field -> newest insertion number
        self._names: dict[bytes, int] = {}  # name -> newest insertion number
        self._seen: set[int] = set()  # hashes of indexable fields sent once as literals, lately
        self._inserted = 0  # insertion numbers so far: the newest entry is number _inserted - 1
        self._size = 0  # RFC 7541 §4.1: name + value + 32 per entry
        self._max = _MAX_TABLE  # the table size the peer's decoder assumes (the protocol default at first)
        self._update: int | None = None  # the smallest size since the last block, when one must be announced

    def encode(self, headers: HeaderList) -> bytes:
        cache = self._cache
        if self._update is None:
            try:
                return b"".join([cache[field] for field in headers])
            except KeyError:
                pass
        parts = []
        if self._update is not None:
            parts.append(_integer(self._update, 5, 0x20))  # RFC 7541 §6.3
            if self._update != self._max:
                parts.append(_integer(self._max, 5, 0x20))
            self._update = None
        for field in headers:
            encoded = cache.get(field)
            parts.append(self._field(field) if encoded is None else encoded)
        return b"".join(parts)

    def _field(self, field: tuple[bytes, bytes]) -> bytes:
        name, value = field
        if name in _NEVER_INDEXED:
            first = 0x10  # never indexed (§6.2.3)
        elif field.__class__ is not tuple and not getattr(field, "indexable", True):
            return self._literal(0x10, name, value)  # not cached: the cache cannot tell it from a plain tuple
        elif name in _NOT_INDEXED:
            first = 0x00  # literal without indexing (§6.2.2)
        else:
            index = _STATIC_FIELD.get(field)
            if index is not None:
                return self._remember(field, _integer(index, 7, 0x80), False)  # §6.1
            number = self._fields.get(field)
            if number is not None:
                return self._remember(field, _integer(self._inserted + 61 - number, 7, 0x80), True)
            size = len(name) + len(value) + 32
            if size <= self._max >> 2:
                seen = self._seen
                key = hash(field)  # a hash, not the field: 64 small ints whatever the fields' sizes
                if key in seen:  # its second time (or a collision, which only indexes a field early)
                    seen.discard(key)
                    return self._insert(name, value, size)
                if len(seen) >= _SEEN_LIMIT:
                    seen.clear()
                seen.add(key)
                return self._literal(0x00, name, value)  # not cached, so that its next use comes back here
            first = 0x00
        encoded = self._literal(first, name, value)
        if len(name) + len(value) > _CACHE_FIELD or name in _UNIQUE_NAMES:
            return encoded
        return self._remember(field, encoded, False)

    def _literal(self, first: int, name: bytes, value: bytes) -> bytes:
        """A literal without indexing or never indexed, its name from the static table when it is there."""
        index = _STATIC_NAME.get(name)
        if index is not None:
            return _integer(index, 4, first) + self._string(value)
        return bytes([first]) + self._string(name) + self._string(value)

    def _remember(self, field: tuple[bytes, bytes], encoded: bytes, dynamic: bool) -> bytes:
        cache = self._cache
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
            self._indexes.clear()
        cache[field] = encoded
        if dynamic:
            self._indexes.append(field)
        return encoded

    def _insert(self, name: bytes, value: bytes, size: int) -> bytes:
        """A literal with incremental indexing (§6.2.1), and the entry added to our copy of the peer's table."""
        index = _STATIC_NAME.get(name)
        if index is None:
            number = self._names.get(name)
            index = None if number is None else self._inserted + 61 - number
        head = bytes([0x40]) + self._string(name) if index is None else _integer(index, 6, 0x40)
        encoded = head + self._string(value)
        cache = self._cache
        for key in self._indexes:  # every index moves up by one
            cache.pop(key, None)
        self._indexes.clear()
        self._size += size
        self._evict(self._max)  # the name referenced above may go too: the decoder reads it first (§4.4)
        field = (name, value)
        self._entries.append((field, size))
        self._fields[field] = self._names[name] = self._inserted
        self._inserted += 1
        return encoded

    def _evict(self, limit: int) -> None:
        entries = self._entries
        while self._size > limit:
            number = self._inserted - len(entries)
            field, size = entries.popleft()
            self._size -= size
            if self._fields.get(field) == number:
                del self._fields[field]
            if self._names.get(field[0]) == number:
                del self._names[field[0]]

    def _string(self, data: bytes) -> bytes:
        """RFC 7541 §5.2: Huffman-coded when the connection asks for it and that is shorter."""
        if self._huffman:
            coded: bytes = _huffman(data)
            if len(coded) < len(data):
                return _integer(len(coded), 7, 0x80) + coded
        return _integer(len(data), 7, 0x00) + data

    def dynamic_table(self) -> tuple[list[tuple[bytes, bytes]], int, int]:
        """The peer's dynamic table as this encoder models it (newest first), its size and maximum (for tests)."""
        return [field for field, _ in reversed(self._entries)], self._size, self._max

    def set_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: our table shrinks at once (entries are evicted, the next block
        announces it, RFC 7541 §4.2); a raised size is used up to our own limit, also announced."""
        size = min(size, _ENCODER_TABLE)
        if size == self._max:
            return
        self._update = size if self._update is None else min(self._update, size)
        self._max = size
        self._evict(size)
        self._cache.clear()  # indexes of evicted entries, and literals sent unindexed for the old size (rare)
        self._indexes.clear()


class HeaderCodec:
    """One connection's HPACK state: our `Encoder` and the decoder (the peer's dynamic table in `hpack`'s class)."""

    __slots__ = ("_max_list", "_table", "encode", "encoder")

    encode: Callable[[HeaderList], bytes]

    def __init__(self, max_header_list_size: int, huffman: bool) -> None:
        self._table = HeaderTable()  # the peer's dynamic table, as its encoder builds it
        self._max_list = max_header_list_size
        self.encoder = Encoder(huffman)
        self.encode = self.encoder.encode  # the hot call, bound once

    def set_encoder_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE (for our encoder)."""
        self.encoder.set_table_size(size)

    def decode(self, block: bytes | memoryview) -> HeaderList:
        """RFC 7541 §6 on one header block, into the peer's dynamic table (`hpack`'s `HeaderTable`).

        Our own loop rather than `hpack.Decoder`, which made a memoryview slice, a bytes copy, a debug log call
        and a `HeaderTuple` per field (~25% of a tunnel's receive CPU). The checks are hpack's: indexes inside
        the tables, size updates only first and within 4096, integers of at most 5 bytes, strings inside the
        block, valid Huffman codes, and the list no larger than the limit (ENHANCE_YOUR_CALM; anything else is
        PROTOCOL_ERROR, as h2 answered hpack's errors)."""
        try:
            return self._decode(bytes(block))
        except (HPACKError, IndexError) as exc:
            raise conn_error(H2ErrorCode.PROTOCOL_ERROR, f"error decoding header block: {exc!r}") from exc

    def _decode(self, data: bytes) -> HeaderList:
        table = self._table
        limit = self._max_list
        out: HeaderList = []
        size = 0
        pos = 0
        end = len(data)
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field (§6.1)
                index, pos = _integer_at(data, pos, 7)
                header = _STATIC[index - 1] if 0 < index <= 61 else table.get_by_index(index)
            elif first & 0x40:  # literal with incremental indexing (§6.2.1)
                index, pos = _integer_at(data, pos, 6)
                name, pos = _string_at(data, pos) if not index else (self._name(index), pos)
                value, pos = _string_at(data, pos)
                table.add(name, value)
                header = (name, value)
            elif first & 0x20:  # dynamic table size update (§6.3)
                if out:
                    raise HPACKError("table size update after a field")
                new_size, pos = _integer_at(data, pos, 5)
                if new_size > _MAX_TABLE:
                    raise HPACKError(f"table size update to {new_size}")
                table.maxsize = new_size
                continue
            else:  # literal without indexing (§6.2.2) or never indexed (§6.2.3)
                index, pos = _integer_at(data, pos, 4)
                name, pos = _string_at(data, pos) if not index else (self._name(index), pos)
                value, pos = _string_at(data, pos)
                header = NeverIndexedHeaderTuple(name, value) if first & 0x10 else (name, value)
            out.append(header)
            size += len(header[0]) + len(header[1]) + 32
            if size > limit:
                raise conn_error(H2ErrorCode.ENHANCE_YOUR_CALM, f"header list over {limit} bytes")
        return out

    def _name(self, index: int) -> bytes:
        name: bytes = (_STATIC[index - 1] if index <= 61 else self._table.get_by_index(index))[0]
        return name


def _integer_at(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer at `pos` with a `prefix`-bit prefix, and where it ends (at most 5 bytes)."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    count = 1
    while True:
        byte = data[pos]
        pos += 1
        count += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if count > 5:
            raise HPACKError("integer over 5 bytes")


def _string_at(data: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2: the string literal at `pos` (Huffman-decoded if so marked) and where it ends."""
    huffman = data[pos] & 0x80
    length, pos = _integer_at(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKError("string literal runs past the block")
    value = data[pos:end]
    return (decode_huffman(value) if huffman else value), end


def _integer(value: int, prefix: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` with a `prefix`-bit prefix, the first byte's other bits from `first`."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
