"""Config text: the one parser of durations, sizes, addresses and key sets, for every config file and flag of both
packages (`hbone serve`/`frontends` YAML, microxds configs and the CLIs' flags).

Sans-IO and location-aware: each `parse_*` takes the value and a `Where` (file, key path and, when the text is
known, its line), and raises one-line `ConfigError`s that read `file:LINE: key.path: reason`. The location-free
`*_text` functions raise `TextError(reason)` for callers that locate errors their own way (microxds sources,
argparse `type=` callables via `arg_type`).

Accepted syntax (the README's configuration reference documents it):
- duration: a number of seconds (`10`, `0.5`), or number-unit pairs, `250ms`, `10s`, `1m30s`, `2h`, `7d`
  (units `ns us µs ms s m h d`), never negative, at most 100 years.
- size: a number of bytes (`65536`), or a number with a unit: `64KiB`, `1MiB`, `4Gi` (binary: `B KiB MiB GiB TiB`,
  also Kubernetes' `Ki Mi Gi Ti`) or `kB MB GB TB` (decimal); whole bytes only.
- listen address: `HOST:PORT`, `[V6]:PORT` or `:PORT` (on a default host); port 0 picks a free port.
- target address: `HOST:PORT` or `[V6]:PORT` (`hbone.wire.authority` rules: port 1 to 65535).
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hbone.errors import ConfigError, ProtocolError
from hbone.wire.authority import Authority, parse_authority

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

#: Longest duration accepted (100 years): beyond it `datetime.timedelta` and timer arithmetic overflow.
MAX_DURATION = 100 * 365 * 86400.0
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SECONDS = re.compile(rf"{_NUMBER}\Z")
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+\Z")
_DURATION_HINT = "use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"

_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "Ki": 1 << 10,
               "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
               "TB": 1000**4}  # fmt: skip
_SIZE = re.compile(rf"({_NUMBER}) ?([A-Za-z]*)\Z")
_SIZE_HINT = "use e.g. 65536, 64KiB or 1MiB"
_LISTEN_HINT = "use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)"


class TextError(ValueError):
    """A config value that does not parse; the message is the reason only (no location)."""


class LineLookup(Protocol):
    """Where a key path is in the config text (`hbone.safeyaml.YamlLines`); None when unknown."""

    def line(self, path: KeyPath) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a config: the file (or flag) name, the key path inside it, and the text's line numbers."""

    file: str
    path: KeyPath = ()
    lines: LineLookup | None = field(default=None, compare=False, repr=False)

    def __truediv__(self, step: str | int) -> Where:
        return Where(self.file, (*self.path, step), self.lines)

    @property
    def line(self) -> int | None:
        return self.lines.line(self.path) if self.lines is not None else None

    @property
    def key(self) -> str:
        """The key path as written in messages: `http2.ping_interval`, `listeners[2].listen`."""
        out = ""
        for step in self.path:
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
        return out

    def __str__(self) -> str:
        if not self.file:  # a key path only (a mapping handed over in code, not read from a file)
            return self.key
        line = self.line
        head = f"{self.file}:{line}" if line is not None else self.file
        return f"{head}: {self.key}" if self.path else head

    def error(self, reason: str, step: str | int | None = None) -> ConfigError:
        """`file:LINE: key.path: reason`, one line; `step` names a child whose line is the better one (a typo'd
        key) while the message keeps this path."""
        if step is not None and self.lines is not None:
            line = self.lines.line((*self.path, step))
            if line is not None:
                head = f"{self.file}:{line}"
                return ConfigError(f"{head}: {self.key}: {one_line(reason)}" if self.path else f"{head}: {reason}")
        return ConfigError(f"{self}: {one_line(reason)}")


def where_of(source: str | Where) -> Where:
    return source if isinstance(source, Where) else Where(source)


def one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


def fail(where: str | Where | None, reason: str) -> ConfigError:
    """The error to raise for `reason` at `where` (a `Where`, a plain prefix such as a flag name, or nothing)."""
    if isinstance(where, Where):
        return where.error(reason)
    return ConfigError(f"{where}: {one_line(reason)}" if where else one_line(reason))


def _located(parse: Callable[[Any], T], value: Any, where: str | Where | None) -> T:
    try:
        return parse(value)
    except TextError as e:
        raise fail(where, str(e)) from None


# --- durations --------------------------------------------------------------------------------------------------


def duration_text(value: Any) -> float:
    """Seconds for a duration value (see the module docstring); raises `TextError`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TextError(f"expected a duration, got {_show(value)}; {_DURATION_HINT}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-") and (_SECONDS.match(text[1:]) or _DURATION.match(text[1:])):
            raise TextError(f"duration {value!r} is negative")
        if _SECONDS.match(text):
            seconds = float(text)
        elif _DURATION.match(text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise TextError(f"invalid duration {value!r}: {_DURATION_HINT}")
    else:
        seconds = float(value)
        if math.isnan(seconds):
            raise TextError(f"invalid duration {value!r}: {_DURATION_HINT}")
        if seconds < 0:
            raise TextError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION:
        raise TextError(f"duration {value!r} is longer than 100 years")
    return seconds


def parse_duration(value: Any, where: str | Where | None) -> float:
    """A duration in seconds, or `ConfigError` at `where`."""
    return _located(duration_text, value, where)


def parse_idle_timeout(value: Any, where: str | Where | None) -> float | None:
    """An idle timeout: a duration, where 0 means none (None)."""
    return parse_duration(value, where) or None


# --- sizes ------------------------------------------------------------------------------------------------------


def size_text(value: Any) -> int:
    """Bytes for a size value (see the module docstring); raises `TextError`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TextError(f"expected a size, got {_show(value)}; {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise TextError(f"size {value} is negative")
        return value
    m = _SIZE.match(value.strip())
    if m is None:
        if value.strip().startswith("-"):
            raise TextError(f"size {value!r} is negative")
        raise TextError(f"invalid size {value!r}: {_SIZE_HINT}")
    number, unit = m.groups()
    if len(number) > 40:  # more bytes than anything holds; also keeps int() under its digit limit
        raise TextError(f"size {value[:20]!r}... is too large")
    if unit not in _SIZE_UNITS:
        close = [u for u in _SIZE_UNITS if u.lower() == unit.lower()]  # case is the usual slip: `64kib`
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TextError(f"invalid size {value!r}: unknown unit {unit!r}{hint}; {_SIZE_HINT}")
    whole, _, frac = number.partition(".")
    scale = _SIZE_UNITS[unit]
    frac = frac.rstrip("0")
    denominator: int = 10 ** len(frac)
    total, rest = divmod((int(whole or "0") * denominator + int(frac or "0")) * scale, denominator)
    if rest:
        raise TextError(f"size {value!r} is not a whole number of bytes")
    return total


def parse_size(value: Any, where: str | Where, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A size in bytes within `minimum..maximum`, or `ConfigError` at `where`."""
    n = _located(size_text, value, where)
    if n < minimum or (maximum is not None and n > maximum):
        top = f" and at most {maximum:,}" if maximum is not None else ""
        raise fail(where, f"size {value!r} is out of range: must be at least {minimum:,}{top} bytes")
    return n


def int_text(value: Any) -> int:
    """An integer: a YAML int, or text in decimal, `0x` hex, `0o` octal or `0b` binary; raises `TextError`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TextError(f"expected an integer, got {_show(value)}")
    if isinstance(value, int):
        return value
    try:
        return int(value.strip(), 0)
    except ValueError:
        raise TextError(f"expected an integer, got {value!r}") from None


def int_in(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    """An `int_text` that also refuses values outside `minimum..maximum` (either end open)."""

    def parse(value: Any) -> int:
        n = int_text(value)
        if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
            lo = "" if minimum is None else f" at least {minimum}"
            hi = "" if maximum is None else f" at most {maximum}"
            raise TextError(f"{n} is out of range: must be{lo}{' and' if lo and hi else ''}{hi}")
        return n

    return parse


def parse_int(value: Any, where: str | Where, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within `minimum..maximum`, or `ConfigError` at `where`."""
    return _located(int_in(minimum, maximum), value, where)


# --- addresses --------------------------------------------------------------------------------------------------


def listen_text(text: Any, default_host: str = "0.0.0.0") -> Authority:
    """A listen address: `HOST:PORT`, `[V6]:PORT` or `:PORT` (on `default_host`); port 0 picks a free port."""
    if not isinstance(text, str):
        raise TextError(f"bad listen address {_show(text)}: {_LISTEN_HINT}")
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise TextError(f"bad listen address {text!r}: {_LISTEN_HINT}")
    if not host:
        host = f"[{default_host}]" if ":" in default_host else default_host
    try:
        probe = parse_authority(f"{host}:{port if port != '0' else '1'}")
    except ProtocolError as e:
        raise TextError(f"bad listen address {text!r}: {e}; use HOST:PORT, [V6]:PORT or :PORT") from None
    return Authority(probe.host, int(port), probe.ip)


def parse_listen(text: Any, where: str | Where | None = None, *, default_host: str = "0.0.0.0") -> Authority:
    """A listen address, or `ConfigError` at `where`."""
    return _located(lambda v: listen_text(v, default_host), text, where)


def listen_host(addr: Authority) -> str:
    """The host string to bind: the IP in text form, or the hostname."""
    return str(addr.ip) if addr.ip is not None else addr.host


def target_text(text: Any) -> Authority:
    """A target address: `HOST:PORT` or `[V6]:PORT` (port 1 to 65535)."""
    if not isinstance(text, str):
        raise TextError(f"bad address {_show(text)}: use HOST:PORT or [V6]:PORT")
    try:
        return parse_authority(text.strip())
    except ProtocolError as e:
        raise TextError(str(e)) from None  # names the text and what is wrong with it


def parse_target(text: Any, where: str | Where | None = None) -> Authority:
    """A target address, or `ConfigError` at `where`."""
    return _located(target_text, text, where)


def host_port(addr: Authority) -> tuple[str, int]:
    """`(host, port)` for socket calls (IPv6 without brackets)."""
    return listen_host(addr), addr.port


# --- keys -------------------------------------------------------------------------------------------------------


def unknown_keys_text(data: Mapping[Any, Any], known: Iterable[str], what: str = "", noun: str = "key") -> str | None:
    """The reason to refuse `data`'s keys not in `known` (the closest known key suggested), or None. `what` names
    the kind of mapping when the key path does not (`listener type socks5`); `noun` what a key is called there."""
    names = list(known)
    unknown = sorted(map(str, (k for k in data if k not in names)))  # YAML keys may be null, numbers, ...
    if not unknown:
        return None
    parts, guessed = [], 0
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        guessed += bool(close)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    text = f"unknown {noun}{'s' if len(unknown) > 1 else ''} {', '.join(parts)}{f' for {what}' if what else ''}"
    # A guess for every key says enough; otherwise list what is known so the reader need not look it up.
    return text if guessed == len(unknown) else f"{text}; known: {', '.join(names)}"


def check_keys(data: Mapping[Any, Any], known: Iterable[str], where: str | Where | None, what: str = "") -> None:
    """Refuse keys of `data` not in `known`: one error naming them (at the first one's line)."""
    names = list(known)
    reason = unknown_keys_text(data, names, what)
    if reason is None:
        return
    if isinstance(where, Where):
        raise where.error(reason, step=min(str(k) for k in data if k not in names))
    raise fail(where, reason)


def mapping(value: Any, where: str | Where, what: str = "a mapping") -> Mapping[Any, Any]:
    """`value` when it is a mapping, else `ConfigError` at `where`."""
    if not isinstance(value, Mapping):
        raise fail(where, f"expected {what}, got {_show(value)}")
    return value


# --- flags ------------------------------------------------------------------------------------------------------


def arg_type(parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """An argparse `type=` for a `*_text` parser: its reason becomes argparse's one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except TextError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


#: argparse `type=` for duration flags (seconds as a float) and size flags (bytes).
DURATION = arg_type(duration_text, "duration")
SIZE = arg_type(size_text, "size")
#: ... and for ports (1-65535), socket marks (32 bits, `0x539` allowed) and user ids.
PORT = arg_type(int_in(1, 65535), "port")
MARK = arg_type(int_in(0, 0xFFFFFFFF), "mark")
UID = arg_type(int_in(0, 0xFFFFFFFF), "uid")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
