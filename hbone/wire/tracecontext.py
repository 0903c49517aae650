"""W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/ §3.2).

ztunnel sends a random traceparent per connection and makes one up when the client sent none. We accept only
version `00` (the only version whose layout is fixed) with lowercase hex and non-zero ids.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hbone.errors import BadRequest

_HEX = re.compile(r"[0-9a-f]+\Z")
FLAG_SAMPLED = 0x01


class InvalidTraceParent(BadRequest):
    """A `traceparent` value that violates W3C Trace Context §3.2."""


@dataclass(frozen=True, slots=True)
class TraceParent:
    """`00-<trace-id 32 hex>-<parent-id 16 hex>-<flags 2 hex>`."""

    trace_id: str
    parent_id: str
    flags: int = FLAG_SAMPLED

    def __post_init__(self) -> None:
        _check_id(self.trace_id, 32, "trace-id")
        _check_id(self.parent_id, 16, "parent-id")
        if not 0 <= self.flags <= 0xFF:
            raise InvalidTraceParent(f"traceparent flags {self.flags} do not fit in one byte")

    @classmethod
    def generate(cls, *, sampled: bool = True) -> TraceParent:
        """A fresh random traceparent (§3.2.2.3/§3.2.2.4: random ids; all-zero is astronomically unlikely)."""
        while True:
            # One read of the OS random source for both ids (secrets.token_hex twice went through SystemRandom and
            # made two getrandom calls: ~1.6% of `hbone forward`'s CPU per tunnel in the Envoy comparison profile).
            raw = os.urandom(24)
            if any(raw[:16]) and any(raw[16:]):
                return cls(raw[:16].hex(), raw[16:].hex(), FLAG_SAMPLED if sampled else 0)

    @classmethod
    def parse(cls, text: str) -> TraceParent:
        """Parse a version-00 traceparent, raising `InvalidTraceParent` naming the bad field."""
        if len(text) != 55:
            raise InvalidTraceParent(f"traceparent {text[:64]!r} is {len(text)} characters; version 00 has 55")
        parts = text.split("-")
        if len(parts) != 4:
            raise InvalidTraceParent(f"traceparent {text!r} must have 4 '-'-separated fields, has {len(parts)}")
        version, trace_id, parent_id, flags = parts
        if version != "00":
            raise InvalidTraceParent(f"traceparent {text!r}: version {version!r} is not supported; expected '00'")
        if len(flags) != 2 or not _HEX.match(flags):
            raise InvalidTraceParent(f"traceparent {text!r}: trace-flags {flags!r} must be 2 lowercase hex digits")
        return cls(trace_id, parent_id, int(flags, 16))

    @property
    def sampled(self) -> bool:
        return bool(self.flags & FLAG_SAMPLED)

    def child(self) -> TraceParent:
        """Same trace, new parent-id: what a proxy sends upstream for its own span (§3.2.2.4)."""
        while True:
            raw = os.urandom(8)
            if any(raw):
                return TraceParent(self.trace_id, raw.hex(), self.flags)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def random_traceparent(*, sampled: bool = True) -> str:
    """`str(TraceParent.generate(sampled=sampled))` without the object: fresh random ids are valid hex by
    construction, so the field checks of `TraceParent` (a regex each) would only repeat themselves."""
    while True:
        raw = os.urandom(24)
        if any(raw[:16]) and any(raw[16:]):
            ids = raw.hex()
            return f"00-{ids[:32]}-{ids[32:]}-{'01' if sampled else '00'}"


def _check_id(value: str, length: int, name: str) -> None:
    if len(value) != length or not _HEX.match(value):
        raise InvalidTraceParent(f"traceparent {name} {value[:40]!r} must be {length} lowercase hex digits")
    if value.count("0") == length:
        raise InvalidTraceParent(f"traceparent {name} is all zeros, which is invalid")
