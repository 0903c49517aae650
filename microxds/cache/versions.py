"""Order-independent digests of resource sets: SotW `version_info` that is equal on every replica.

The SotW version of a type is a function of the (name, version) pairs the client holds, not of time or of a
counter, so a client that reconnects to another replica with `version_info` set finds it unchanged. We use the
sum modulo 2**64 of a 64-bit BLAKE2b digest of each pair: it equals a hash of the sorted pairs for our purpose
(names are unique per type, so no pair cancels) and it is updated in O(1) per changed resource instead of
re-hashing every resource the client holds on each push.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK = (1 << 64) - 1


def pair_digest(name: str, version: str) -> int:
    return int.from_bytes(blake2b(f"{name}\0{version}".encode(), digest_size=8).digest(), "big")


class SetDigest:
    """A running digest of a name -> version map; `add`/`remove` must mirror the map's own changes."""

    __slots__ = ("_sum",)

    def __init__(self) -> None:
        self._sum = 0

    def add(self, name: str, version: str) -> None:
        self._sum = (self._sum + pair_digest(name, version)) & _MASK

    def remove(self, name: str, version: str) -> None:
        self._sum = (self._sum - pair_digest(name, version)) & _MASK

    def clear(self) -> None:
        self._sum = 0

    def hexdigest(self) -> str:
        return f"{self._sum:016x}"


def digest_of(pairs: dict[str, str]) -> str:
    """The digest of a whole map, as `SetDigest` would report it after adding every pair."""
    d = SetDigest()
    for name, version in pairs.items():
        d.add(name, version)
    return d.hexdigest()
