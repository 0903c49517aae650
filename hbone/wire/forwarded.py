"""The `Forwarded` header (RFC 7239 §4 to §6) as ztunnel uses it: `for="<ip:port>";host=<service hostname>`.

ztunnel always quotes `for` (an IPv6 node is `"[v6]:port"`, RFC 7239 §6) and adds `host=` when the destination
service is known; the server reads only `host`. We parse the whole grammar so any proxy's header is accepted or
rejected with a precise reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hbone.errors import BadRequest, LimitExceeded
from hbone.wire.authority import Authority

MAX_FORWARDED_BYTES = 8192
MAX_FORWARDED_ELEMENTS = 64
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OBF = re.compile(r"_[A-Za-z0-9._-]+\Z")  # RFC 7239 §6.3 obfnode / obfport
_PORT = re.compile(r"[0-9]{1,5}\Z")
_OWS = " \t"


class InvalidForwarded(BadRequest):
    """A `forwarded` header that violates RFC 7239 §4."""


@dataclass(frozen=True, slots=True)
class ForwardedElement:
    """One comma-separated element: its parameters with lowercase names, in order (RFC 7239 §4)."""

    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def for_(self) -> str | None:
        return self.get("for")

    @property
    def host(self) -> str | None:
        return self.get("host")

    @property
    def by(self) -> str | None:
        return self.get("by")

    @property
    def proto(self) -> str | None:
        return self.get("proto")


def forwarded_value(for_: Authority | str | None = None, host: str | None = None) -> str:
    """Build ztunnel's form: `for="10.0.0.1:3333";host=svc.ns.svc.cluster.local` (RFC 7239 §4, §6)."""
    parts = []
    if for_ is not None:
        node = str(for_)
        check_node(node)
        parts.append(f"for={_quote(node)}")
    if host is not None:
        parts.append(f"host={_token_or_quoted(host)}")
    if not parts:
        raise InvalidForwarded("a forwarded element needs at least one of for= or host=")
    return ";".join(parts)


def _token_or_quoted(value: str) -> str:
    return value if value and all(c in _TOKEN_CHARS for c in value) else _quote(value)


def _quote(value: str) -> str:
    for ch in value:
        if ch == "\x7f" or (ch < " " and ch != "\t") or ord(ch) > 0xFF:
            raise InvalidForwarded(f"forwarded value {value!r} has a character {ch!r} that cannot be quoted")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_node(node: str) -> None:
    """Validate a `for`/`by` node (RFC 7239 §6): IPv4, "[IPv6]", "unknown" or _obf, each with an optional port."""
    if node.startswith("["):
        close = node.find("]")
        if close < 0:
            raise InvalidForwarded(f"forwarded node {node!r} has '[' without ']'")
        name, rest = node[1:close], node[close + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise InvalidForwarded(f"forwarded node {node!r}: {name!r} is not an IPv6 address") from None
    else:
        name, colon, port = node.partition(":")
        rest = colon + port
        if name != "unknown" and not _OBF.match(name):
            try:
                ipaddress.IPv4Address(name)
            except ValueError:
                raise InvalidForwarded(
                    f"forwarded node {node!r}: {name!r} is not IPv4, [IPv6], 'unknown' or an _obfuscated name"
                ) from None
    if rest:
        port = rest[1:]
        if not rest.startswith(":") or not (_PORT.match(port) or _OBF.match(port)):
            raise InvalidForwarded(f"forwarded node {node!r}: {rest!r} is not ':' followed by a port")


def parse_forwarded(headers: str | Iterable[str]) -> list[ForwardedElement]:
    """Parse one or more `forwarded` header values (RFC 7239 §4); several lines form one list."""
    values = [headers] if isinstance(headers, str) else list(headers)
    text = ",".join(values)
    if len(text) > MAX_FORWARDED_BYTES:
        raise LimitExceeded(f"forwarded is {len(text)} bytes; the maximum is {MAX_FORWARDED_BYTES}")
    elements: list[ForwardedElement] = []
    params: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _OWS:
            i += 1
        if i < n and text[i] not in ",;":
            start = i
            while i < n and text[i] in _TOKEN_CHARS:
                i += 1
            name = text[start:i].lower()
            if name == "":
                raise InvalidForwarded(f"forwarded: unexpected {text[i]!r} at index {i}; expected a parameter name")
            if i >= n or text[i] != "=":
                raise InvalidForwarded(f"forwarded: parameter {name!r} at index {start} is not followed by '='")
            i += 1
            value, i = _read_value(text, i)
            if any(k == name for k, _ in params):
                raise InvalidForwarded(f"forwarded: parameter {name!r} occurs twice in one element (RFC 7239 §4)")
            if name in ("for", "by"):
                check_node(value)
            params.append((name, value))
            while i < n and text[i] in _OWS:
                i += 1
        if i >= n or text[i] == ",":
            if params:
                elements.append(ForwardedElement(tuple(params)))
                if len(elements) > MAX_FORWARDED_ELEMENTS:
                    raise LimitExceeded(f"forwarded has more than {MAX_FORWARDED_ELEMENTS} elements")
            params = []
            if i >= n:
                break
        elif text[i] != ";":
            raise InvalidForwarded(f"forwarded: unexpected {text[i]!r} at index {i}; expected ';' or ','")
        i += 1
    if not elements:
        raise InvalidForwarded("forwarded header has no elements")
    return elements


def _read_value(text: str, i: int) -> tuple[str, int]:
    """A token or quoted-string (RFC 9110 §5.6.4) starting at `i`; returns (unquoted value, next index)."""
    n = len(text)
    if i < n and text[i] == '"':
        out: list[str] = []
        i += 1
        while i < n:
            ch = text[i]
            if ch == '"':
                return "".join(out), i + 1
            if ch == "\\":
                if i + 1 >= n:
                    break
                ch = text[i + 1]
                i += 1
            if ch == "\x7f" or (ch < " " and ch != "\t"):
                raise InvalidForwarded(f"forwarded: control character {ch!r} in quoted string at index {i}")
            out.append(ch)
            i += 1
        raise InvalidForwarded("forwarded: quoted string is not terminated")
    start = i
    while i < n and text[i] in _TOKEN_CHARS:
        i += 1
    if i == start:
        found = repr(text[i]) if i < n else "end of header"
        raise InvalidForwarded(f"forwarded: expected a token or quoted string at index {i}, found {found}")
    return text[start:i], i
