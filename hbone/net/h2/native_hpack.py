"""Header blocks for the native engine: HPACK (RFC 7541) through the `hpack` library, and RFC 9113 §8.2-8.3 checks.

The codec keeps one encoder and one decoder per connection with our limits (the decoder's header list limit is
twice what we advertise, as the driver had it with h2: a request a little over the limit gets a 431 on its
stream from the driver, only a grossly oversized block costs the connection). Decoding errors are connection
errors as in h2: an oversized list is ENHANCE_YOUR_CALM, anything else PROTOCOL_ERROR.

`check_received` applies the rules h2 applies to received blocks (the test oracle), in one pass with bytes methods
instead of h2's chain of seven generators, two of which loop over every byte in Python (~13-20% of a tunnel's
CPU in the churn profile): names without uppercase, controls, spaces or non-ASCII and with ':' only first; no NUL,
CR or LF in values and no surrounding whitespace; no connection-specific fields, `te` only "trailers";
pseudo-headers known, first, once, and right for the kind of block; `:authority`/`host` present and agreeing
on requests; no empty `:path`. Cookie crumbs are joined into one field at the end, as h2 does.
"""

from __future__ import annotations

import re
from typing import Any

from hpack import HPACKError, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from hbone.errors import H2ErrorCode, ProtocolError
from hbone.net.h2.api import HeaderList
from hbone.net.h2.native_frames import conn_error

# Kinds of received header block (h2's HeaderValidationFlags, folded into one value).
REQUEST = 0
RESPONSE = 1  # final or informational response
TRAILERS = 2

# RFC 7541 Appendix A: the static table, by full field and by name (first index wins, as in hpack).
_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, _field in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault(_field, _i)
    _STATIC_NAME.setdefault(_field[0], _i)
_STATIC = HeaderTable.STATIC_TABLE
_MAX_TABLE = 4096  # the dynamic table size the peer may use (the protocol default; h2 allowed the same)
_CACHE_LIMIT = 512  # encoded fields remembered per connection (the cache restarts when full)
_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode

_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]").search
_WS = (0x20, 0x09)
_CONNECTION_HEADERS = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
_REQUEST_ONLY = frozenset({b":scheme", b":path", b":authority", b":method", b":protocol"})


class HeaderCodec:
    """One connection's HPACK state: the `hpack` decoder (the peer's dynamic table) and our own encoder.

    The encoder never adds to the peer's dynamic table: a field is a static-table index when the table has it
    whole, else a literal "without indexing" (RFC 7541 §6.2.2; never-indexed for `NeverIndexedHeaderTuple`s),
    with the name from the static table when it is there. Because it keeps no state, each field's encoding is
    computed once per connection and reused: a tunnel's blocks cost a dict lookup per field, where hpack's
    encoder searched its tables, logged and updated the dynamic table for every field (~17% of a tunnel's CPU
    per side). The cost is bytes on the wire: a repeated field is sent in full each time, not as a one-byte
    dynamic-table index (a CONNECT request of ~120 bytes instead of ~30 after the first), which the loopback
    and LAN hops HBONE runs on do not notice.
    """

    __slots__ = ("_cache", "_encoder_size", "_huffman", "_max_list", "_table", "_table_size")

    def __init__(self, max_header_list_size: int, huffman: bool) -> None:
        self._table = HeaderTable()  # the peer's dynamic table, as its encoder builds it
        self._max_list = max_header_list_size
        self._huffman = huffman
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        self._table_size: int | None = None  # a size update the next block must start with
        self._encoder_size = _MAX_TABLE  # the dynamic table size the peer's decoder assumes we use

    def encode(self, headers: HeaderList) -> bytes:
        cache = self._cache
        if self._table_size is None:
            try:
                return b"".join([cache[field] for field in headers])
            except KeyError:
                pass
        parts = []
        if self._table_size is not None:
            parts.append(_integer(self._table_size, 5, 0x20))  # RFC 7541 §6.3
            self._table_size = None
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                encoded = self._field(field)
                if field.__class__ is tuple:  # a NeverIndexedHeaderTuple compares equal to a plain tuple
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[field] = encoded
            parts.append(encoded)
        return b"".join(parts)

    def _field(self, field: tuple[bytes, bytes]) -> bytes:
        name, value = field
        if getattr(field, "indexable", True):
            index = _STATIC_FIELD.get((name, value))
            if index is not None:
                return _integer(index, 7, 0x80)  # RFC 7541 §6.1
            first = 0x00  # literal without indexing (§6.2.2)
        else:
            first = 0x10  # never indexed (§6.2.3)
        index = _STATIC_NAME.get(name)
        if index is not None:
            return _integer(index, 4, first) + self._string(value)
        return bytes([first]) + self._string(name) + self._string(value)

    def _string(self, data: bytes) -> bytes:
        """RFC 7541 §5.2: Huffman-coded when the connection asks for it and that is shorter."""
        if self._huffman:
            coded: bytes = _huffman(data)
            if len(coded) < len(data):
                return _integer(len(coded), 7, 0x80) + coded
        return _integer(len(data), 7, 0x00) + data

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

    def set_encoder_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE. Our encoder uses no dynamic table, but a maximum lowered below
        the size the peer's decoder assumes must be announced at the start of the next block (RFC 7541 §4.2);
        a raised or unchanged one needs nothing (hpack's encoder does the same)."""
        if size < self._encoder_size:
            self._encoder_size = size
            self._table_size = size


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


def _bad(message: str) -> ProtocolError:
    return conn_error(H2ErrorCode.PROTOCOL_ERROR, message)


def is_informational(headers: HeaderList) -> bool:
    """A `:status` of 1xx among the leading pseudo-headers (h2 stops looking at the first regular field)."""
    for name, value in headers:
        if not name.startswith(b":"):
            return False
        if name == b":status":
            return value.startswith(b"1")
    return False


def check_received(headers: HeaderList, kind: int) -> HeaderList:
    """The block as the application gets it (cookies joined), or a PROTOCOL_ERROR connection error."""
    cookies: list[bytes] = []
    out: HeaderList = []
    seen: set[bytes] = set()
    regular = False
    method = authority = host = None
    for header in headers:
        name, value = header
        if not name:
            raise _bad("empty header name")
        if _BAD_NAME(name) is not None or name.find(b":", 1) != -1:
            raise _bad(f"illegal header name {name!r}")
        # Bytes as ints (NUL, LF, CR): `b"\x00" in value` first tries the byte as an index, raises and clears a
        # TypeError (~0.8 us a test, nine a CONNECT request); an int goes straight to memchr.
        if value and (0 in value or 10 in value or 13 in value):
            raise _bad(f"illegal value of header {name!r}")
        if name == b"cookie":  # h2 moves the crumbs to the end, joined, before it checks anything else
            cookies.append(value)
            continue
        if value and (value[0] in _WS or value[-1] in _WS):
            raise _bad(f"whitespace around the value of header {name!r}")
        if name[0] == 0x3A:  # ':'
            if name in seen or regular or name not in _PSEUDO:
                raise _bad(f"pseudo-header {name!r} duplicated, out of sequence or unknown")
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and kind == REQUEST:
                raise _bad("empty :path")
        else:
            regular = True
            if name in _CONNECTION_HEADERS:
                raise _bad(f"connection-specific header {name!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise _bad(f"te: {value!r}")
            if name == b"host":
                if host is not None and kind == REQUEST:
                    raise _bad("several host headers")
                host = value
        out.append(header)
    _check_pseudo(seen, method, kind)
    if kind == REQUEST:
        if authority is None and host is None:
            raise _bad("request without :authority or host")
        if authority is not None and host is not None and authority != host:
            raise _bad(":authority and host differ")
    if cookies:
        joined = b"; ".join(cookies)
        if joined and (joined[0] in _WS or joined[-1] in _WS):
            raise _bad("whitespace around the value of header b'cookie'")
        out.append(NeverIndexedHeaderTuple(b"cookie", joined))
    return out


def _check_pseudo(seen: set[bytes], method: Any, kind: int) -> None:
    if kind == TRAILERS:
        if seen:
            raise _bad("pseudo-header in trailers")
        return
    if kind == RESPONSE:
        if b":status" not in seen or seen & _REQUEST_ONLY:
            raise _bad("response without :status or with request pseudo-headers")
        return
    if b":method" not in seen or b":status" in seen:
        raise _bad("request without :method or with :status")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            raise _bad("CONNECT with :scheme or :path")
    elif b":scheme" not in seen or b":path" not in seen:
        raise _bad("request without :scheme or :path")
    if not connect and b":protocol" in seen:
        raise _bad(":protocol outside CONNECT")


def header_list_size(headers: HeaderList) -> int:
    """RFC 9113 §6.5.2: the sum of name + value + 32 over the fields."""
    return sum(len(n) + len(v) + 32 for n, v in headers)
