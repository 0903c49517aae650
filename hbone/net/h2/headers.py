"""h2tuning item 9: h2's inbound header validation, with a C-speed first pass that only ever says "acceptable".

h2 validates every received header block (RFC 9113 §8.2, §8.3) in a chain of seven generators, two of which loop
over every byte of every name and value in Python (`_reject_illegal_characters`). Per tunnel that was most of the
"header decode/validation" share of the churn profile (a ztunnel-style CONNECT carries a 55-byte `traceparent`
and a long `baggage`). `acceptable()` checks the same rules with bytes methods and a regex, in one pass. It is
one-sided: it returns True only when every one of h2's checks would pass; whenever anything looks off, or the
configuration is one we did not write the pass for, h2's own pipeline runs on the block and decides (so the
accepted headers, the rejected ones and every error message stay exactly h2's). Guard tests compare both on
generated blocks (`tests/unit/test_net_h2headers.py`).
"""

from __future__ import annotations

import re
from typing import Any

from h2.exceptions import ProtocolError
from h2.stream import H2Stream
from h2.utilities import (
    _ALLOWED_PSEUDO_HEADER_FIELDS,
    CONNECTION_HEADERS,
    _check_pseudo_header_field_acceptability,
    normalize_inbound_headers,
    validate_headers,
)

# RFC 9113 §8.2.1 as h2 enforces it: no byte <= 0x20, no uppercase, nothing >= 0x7f in a name.
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]").search
_WS = (0x20, 0x09)


def acceptable(block: list[Any], flags: Any) -> bool:
    """True only if h2's `validate_headers(block, flags)` would pass every header unchanged (False: let h2 decide)."""
    seen: set[bytes] = set()
    regular = False
    method = authority = host = None
    for name, value in block:
        if name.__class__ is not bytes or value.__class__ is not bytes:
            return False
        if not name or _BAD_NAME(name) is not None or name.find(b":", 1) != -1:
            return False
        # NUL, LF, CR as ints: a bytes operand to `in` costs a raised and cleared TypeError first (native_hpack).
        if value and (0 in value or 10 in value or 13 in value or value[0] in _WS or value[-1] in _WS):
            return False
        if name[0] == 0x3A:  # ':'
            if regular or name in seen or name not in _ALLOWED_PSEUDO_HEADER_FIELDS:
                return False
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return False
        else:
            regular = True
            if name in CONNECTION_HEADERS or (name == b"host" and host is not None):
                return False
            if name == b"te" and value.lower() != b"trailers":
                return False
            if name == b"host":
                host = value
    try:
        _check_pseudo_header_field_acceptability(seen, method, flags)
    except ProtocolError:
        return False
    if not (flags.is_response_header or flags.is_trailer):
        if authority is None and host is None:
            return False
        if authority is not None and host is not None and authority != host:
            return False
    return True


class FastHeaderStream(H2Stream):  # type: ignore[misc]
    """An `H2Stream` whose received header blocks go through `acceptable()` before (instead of) h2's pipeline."""

    def _process_received_headers(self, headers: Any, flags: Any, header_encoding: Any) -> list[Any]:
        config = self.config
        ours = config.validate_inbound_headers and config.normalize_inbound_headers
        if isinstance(header_encoding, str) or not ours:
            result: list[Any] = super()._process_received_headers(headers, flags, header_encoding)
            return result
        block = list(normalize_inbound_headers(headers, flags))
        if acceptable(block, flags):
            return block
        return list(validate_headers(block, flags))  # h2 decides: raises its own ProtocolError, or passes
