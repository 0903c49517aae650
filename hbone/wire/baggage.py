"""W3C Baggage (https://www.w3.org/TR/baggage/ §3) and the ztunnel peer-metadata keys carried in it.

ztunnel sends the source workload's metadata in the CONNECT `baggage` header and, with ENABLE_RESPONSE_BAGGAGE,
the destination's metadata in the 200 response (src/baggage.rs). Values there are plain Kubernetes names; the
codec still percent-encodes anything outside `baggage-octet` so arbitrary strings round-trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from hbone.errors import BadRequest, LimitExceeded

MAX_BAGGAGE_BYTES = 8192  # W3C Baggage §3.3.1 "Limits"
MAX_BAGGAGE_MEMBERS = 180

# RFC 7230 token (W3C Baggage §3.3.1.1 key = token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E (no CTL, space, DQUOTE, ',', ';', '\').
_SAFE = frozenset(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%'
)  # '%' is legal on the wire but must start an escape, so it is always encoded
_OCTET = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")
_OWS = " \t"
WORKLOAD_TYPES = ("deployment", "cronjob", "pod", "job")


class InvalidBaggage(BadRequest):
    """A `baggage` header that violates W3C Baggage §3.3.1."""


def encode_baggage(members: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Serialise members as `k=v,k2=v2`, percent-encoding values (W3C Baggage §3.3.1.1 `value`)."""
    items = list(members.items()) if isinstance(members, Mapping) else list(members)
    if len(items) > MAX_BAGGAGE_MEMBERS:
        raise LimitExceeded(f"baggage has {len(items)} members; the maximum is {MAX_BAGGAGE_MEMBERS}")
    parts = []
    for key, value in items:
        if not _TOKEN.match(key):
            raise InvalidBaggage(f"baggage key {key!r} is not an RFC 7230 token")
        parts.append(f"{key}={_percent_encode(value)}")
    text = ",".join(parts)
    if len(text) > MAX_BAGGAGE_BYTES:
        raise LimitExceeded(f"baggage is {len(text)} bytes; the maximum is {MAX_BAGGAGE_BYTES}")
    return text


def _percent_encode(value: str) -> str:
    out = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            try:
                encoded = ch.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidBaggage(f"baggage value contains an unencodable lone surrogate {ch!r}") from None
            out.extend(f"%{b:02X}" for b in encoded)
    return "".join(out)


def _percent_decode(value: str, key: str) -> str:
    if "%" not in value:
        return value
    raw = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            hexpair = value[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexpair):
                raise InvalidBaggage(f"baggage value of {key!r}: '%' at index {i} is not followed by two hex digits")
            raw.append(int(hexpair, 16))
            i += 3
        else:
            raw += ch.encode("ascii")
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBaggage(f"baggage value of {key!r} does not percent-decode to UTF-8: {exc.reason}") from None


def decode_baggage(headers: str | Iterable[str]) -> dict[str, str]:
    """Parse one or more `baggage` header values into {key: decoded value} (W3C Baggage §3.3.1).

    Several header lines are one list (RFC 9110 §5.3). Properties after `;` are validated loosely and dropped.
    A later duplicate key wins. Raises `InvalidBaggage` or `LimitExceeded`.
    """
    values = [headers] if isinstance(headers, str) else list(headers)
    total = sum(len(v) for v in values) + max(len(values) - 1, 0)
    if total > MAX_BAGGAGE_BYTES:
        raise LimitExceeded(f"baggage is {total} bytes; the maximum is {MAX_BAGGAGE_BYTES}")
    result: dict[str, str] = {}
    count = 0
    for text in values:
        if text.strip(_OWS) == "":
            continue  # an empty field value carries no members (treat like an absent header)
        for member in text.split(","):
            count += 1
            if count > MAX_BAGGAGE_MEMBERS:
                raise LimitExceeded(f"baggage has more than {MAX_BAGGAGE_MEMBERS} members")
            key, value = _parse_member(member.strip(_OWS), count)
            result[key] = value
    return result


def _parse_member(member: str, index: int) -> tuple[str, str]:
    if member == "":
        raise InvalidBaggage(f"baggage list member {index} is empty")
    head, _, _properties = member.partition(";")  # properties carry no meaning for us (§3.3.1.2)
    key, eq, value = head.partition("=")
    key, value = key.strip(_OWS), value.strip(_OWS)
    if not eq:
        raise InvalidBaggage(f"baggage list member {index} ({member[:40]!r}) has no '='")
    if not _TOKEN.match(key):
        raise InvalidBaggage(f"baggage list member {index}: key {key[:40]!r} is not an RFC 7230 token")
    if not _OCTET.match(value):
        bad = next(c for c in value if not _OCTET.match(c))
        raise InvalidBaggage(f"baggage value of {key!r} contains forbidden character {bad!r}")
    return key, _percent_decode(value, key)


@dataclass(frozen=True, slots=True)
class PeerMetadata:
    """The workload metadata ztunnel puts in baggage (src/baggage.rs). Empty fields are left out of the header."""

    cluster: str = ""
    namespace: str = ""
    workload_name: str = ""
    workload_type: str = "deployment"  # one of WORKLOAD_TYPES: selects the key k8s.<type>.name
    service_name: str = ""
    service_version: str = ""
    region: str = ""
    zone: str = ""

    def to_members(self) -> list[tuple[str, str]]:
        if self.workload_type not in WORKLOAD_TYPES:
            raise InvalidBaggage(f"workload_type {self.workload_type!r} is not one of {', '.join(WORKLOAD_TYPES)}")
        pairs = [
            ("k8s.cluster.name", self.cluster),
            ("k8s.namespace.name", self.namespace),
            (f"k8s.{self.workload_type}.name", self.workload_name),
            ("service.name", self.service_name),
            ("service.version", self.service_version),
            ("cloud.region", self.region),
            ("cloud.availability_zone", self.zone),
        ]
        return [(k, v) for k, v in pairs if v]

    def to_baggage(self) -> str:
        """The `baggage` header value, in ztunnel's key order."""
        return encode_baggage(self.to_members())

    @classmethod
    def from_baggage(cls, baggage: str | Iterable[str] | Mapping[str, str]) -> PeerMetadata:
        """Read the known keys from a header value (or decoded members); unknown keys are ignored."""
        members = baggage if isinstance(baggage, Mapping) else decode_baggage(baggage)
        workload_type, workload_name = "deployment", ""
        for wtype in WORKLOAD_TYPES:
            if members.get(f"k8s.{wtype}.name"):
                workload_type, workload_name = wtype, members[f"k8s.{wtype}.name"]
                break
        return cls(
            cluster=members.get("k8s.cluster.name", ""),
            namespace=members.get("k8s.namespace.name", ""),
            workload_name=workload_name,
            workload_type=workload_type,
            service_name=members.get("service.name", ""),
            service_version=members.get("service.version", ""),
            region=members.get("cloud.region", ""),
            zone=members.get("cloud.availability_zone", ""),
        )

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "workload_type")
