"""HBONE targets: `ip:port`, `[v6]:port` and `host:port` (RFC 9113 §8.5, RFC 3986 §3.2, RFC 1123 §2.1).

An HBONE `:authority` (and the POST-mode `x-tun` header) names the final destination. ztunnel accepts an IP
literal with a port, or a service hostname with a port; nothing else (no userinfo, no zone ids, no default port).
Parsing is strict so that two spellings of one target cannot slip past authorization as different strings.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from hbone.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOSTNAME_LEN = 253  # RFC 1035 §2.3.4 (255 octets on the wire = 253 characters in text form)
MAX_LABEL_LEN = 63
# RFC 1123 §2.1: letters, digits and hyphens; a label may start with a digit but not with or end with a hyphen.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_DIGITS = re.compile(r"[0-9]{1,5}\Z")


class InvalidAuthority(BadRequest):
    """An HBONE target that is not `ip:port`, `[v6]:port` or `host:port` (HBONE answers 400)."""


@dataclass(frozen=True, slots=True)
class Authority:
    """A validated tunnel target. `host` is canonical: lowercase hostname or compressed IP (no brackets)."""

    host: str
    port: int
    ip: IPAddress | None = None

    @classmethod
    def parse(cls, text: str) -> Authority:
        """Parse `ip:port`, `[v6]:port` or `host:port`; raise `InvalidAuthority` saying what is wrong."""
        return parse_authority(text)

    @classmethod
    def from_parts(cls, host: str | IPAddress, port: int) -> Authority:
        """Build from a host (IP or hostname, IPv6 without brackets) and a port, validating both."""
        _check_port_number(port, str(host))
        if isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return cls(host.compressed, port, host)
        ip = _as_ip(host)
        if ip is not None:
            return cls(ip.compressed, port, ip)
        return cls(check_hostname(host), port, None)

    @property
    def is_ip(self) -> bool:
        return self.ip is not None

    def __str__(self) -> str:
        if isinstance(self.ip, ipaddress.IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_authority(text: str) -> Authority:
    """Parse an HBONE target (RFC 3986 §3.2.2 host, RFC 3986 §3.2.3 port, RFC 1123 hostnames)."""
    if not isinstance(text, str):
        raise InvalidAuthority(f"authority must be a string, got {type(text).__name__}")
    if text == "":
        raise InvalidAuthority("authority is empty; expected host:port")
    if len(text) > MAX_HOSTNAME_LEN + 8:
        raise InvalidAuthority(f"authority is {len(text)} characters long; the maximum is {MAX_HOSTNAME_LEN + 8}")
    for i, ch in enumerate(text):
        if ch <= " " or ch >= "\x7f":
            raise InvalidAuthority(f"authority {text!r} has a forbidden character {ch!r} at index {i}")
    if "@" in text:
        raise InvalidAuthority(f"authority {text!r} must not contain userinfo ('@')")
    if text.startswith("["):
        return _parse_bracketed(text)
    if "]" in text:
        raise InvalidAuthority(f"authority {text!r} has ']' without an opening '['")
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise InvalidAuthority(f"authority {text!r} has no port; expected host:port")
    if ":" in host:
        raise InvalidAuthority(f"authority {text!r}: an IPv6 address must be in brackets, as [addr]:port")
    if host == "":
        raise InvalidAuthority(f"authority {text!r} has an empty host")
    port = _parse_port(port_text, text)
    ip = _as_ip(host)
    if ip is not None:
        return Authority(ip.compressed, port, ip)
    return Authority(check_hostname(host), port, None)


def _parse_bracketed(text: str) -> Authority:
    close = text.find("]")
    if close < 0:
        raise InvalidAuthority(f"authority {text!r} has '[' without a closing ']'")
    inner, rest = text[1:close], text[close + 1 :]
    if inner == "":
        raise InvalidAuthority(f"authority {text!r} has an empty host between brackets")
    if rest == "":
        raise InvalidAuthority(f"authority {text!r} has no port; expected [addr]:port")
    if not rest.startswith(":"):
        raise InvalidAuthority(f"authority {text!r}: expected ':' after ']', found {rest[0]!r}")
    if "%" in inner:
        raise InvalidAuthority(f"authority {text!r}: IPv6 zone identifiers are not allowed")
    try:
        ip = ipaddress.IPv6Address(inner)
    except ValueError:
        raise InvalidAuthority(f"authority {text!r}: {inner!r} between brackets is not an IPv6 address") from None
    return Authority(ip.compressed, _parse_port(rest[1:], text), ip)


def _parse_port(port_text: str, text: str) -> int:
    if port_text == "":
        raise InvalidAuthority(f"authority {text!r} has an empty port after ':'")
    if not _DIGITS.match(port_text):
        raise InvalidAuthority(f"authority {text!r}: port {port_text!r} must be 1 to 5 decimal digits")
    if len(port_text) > 1 and port_text[0] == "0":
        raise InvalidAuthority(f"authority {text!r}: port {port_text!r} has a leading zero")
    port = int(port_text)
    _check_port_number(port, text)
    return port


def _check_port_number(port: int, text: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidAuthority(f"port for {text!r} must be an int, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise InvalidAuthority(f"authority {text!r}: port {port} is out of range 1..65535")


def _as_ip(host: str) -> IPAddress | None:
    """An IP literal, or None when `host` is not one. Leading-zero IPv4 octets are rejected by ipaddress."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_hostname(host: str) -> str:
    """Validate an RFC 1123 §2.1 hostname and return it lowercased; raise `InvalidAuthority` otherwise."""
    if host == "":
        raise InvalidAuthority("hostname is empty")
    if len(host) > MAX_HOSTNAME_LEN:
        raise InvalidAuthority(f"hostname is {len(host)} characters long; the maximum is {MAX_HOSTNAME_LEN}")
    if host.endswith("."):
        raise InvalidAuthority(f"hostname {host!r} must not end with '.'")
    labels = host.split(".")
    for index, label in enumerate(labels):
        if label == "":
            raise InvalidAuthority(f"hostname {host!r} has an empty label at position {index}")
        if len(label) > MAX_LABEL_LEN:
            raise InvalidAuthority(f"hostname {host!r}: label {label[:16]!r}... is longer than {MAX_LABEL_LEN}")
        if not _LABEL.match(label):
            raise InvalidAuthority(
                f"hostname {host!r}: label {label!r} may only contain letters, digits and inner hyphens"
            )
    # RFC 3696 §2: an all-numeric top-level label would be confused with a (malformed) IPv4 address.
    if labels[-1].isdigit():
        raise InvalidAuthority(f"{host!r} is neither a valid IPv4 address nor a hostname (numeric last label)")
    return host.lower()
