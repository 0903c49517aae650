"""`--admin`, `--metrics`, `--readiness` (and the same config keys): where a daemon's admin ports listen.

Defaults follow ztunnel: admin 127.0.0.1:15000 (local only: it can change log levels), metrics :15020 and
readiness :15021 on all interfaces. `off` disables a port. A flag beats the config key, which beats the default.
Library callers that build configs in code get every port off unless they ask (`AdminOptions()`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hbone.configtext import TextError, Where, host_port, listen_text
from hbone.errors import ConfigError


def parse_listen(text: str, where: str, default_host: str = "0.0.0.0") -> tuple[str, int] | None:
    """`HOST:PORT`, `:PORT` (all interfaces), `[V6]:PORT` (`hbone.configtext`), or `off` (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        return host_port(listen_text(text, default_host))
    except TextError as e:
        raise ConfigError(f"{where}: {e}, or off") from None


DEFAULTS = {"admin": "127.0.0.1:15000", "metrics": ":15020", "readiness": ":15021"}
KEYS = tuple(DEFAULTS)


@dataclass(frozen=True)
class AdminOptions:
    admin: tuple[str, int] | None = None
    metrics: tuple[str, int] | None = None
    readiness: tuple[str, int] | None = None

    def ports(self) -> Iterator[tuple[str, tuple[str, int]]]:
        for name in KEYS:
            addr = getattr(self, name)
            if addr is not None:
                yield name, addr

    @classmethod
    def resolve(cls, flags: argparse.Namespace | None = None, config: Mapping[str, Any] | None = None) -> AdminOptions:
        """Flag, else config key, else the ztunnel default, for each port."""
        values = {}
        for key in KEYS:
            text = getattr(flags, key, None) if flags is not None else None
            source = f"--{key}"
            if text is None and config is not None and config.get(key) is not None:
                text, source = str(config[key]), f"{key}:"
            values[key] = parse_listen(text if text is not None else DEFAULTS[key], source)
        return cls(**values)

    @classmethod
    def off(cls) -> AdminOptions:
        return cls()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The three port flags, for every long-running command."""
    group = parser.add_argument_group("admin ports (ztunnel's; HOST:PORT, :PORT or off)")
    group.add_argument("--admin", metavar="ADDR", help="/config_dump, /connections, /logging (default 127.0.0.1:15000)")
    group.add_argument("--metrics", metavar="ADDR", help="Prometheus /metrics (default :15020)")
    group.add_argument("--readiness", metavar="ADDR", help="/healthz/ready (default :15021)")


def config_keys(data: Mapping[str, Any], source: str | Where) -> dict[str, str]:
    """The `admin:`, `metrics:`, `readiness:` keys of a config file, checked (a bad value fails at load)."""
    out = {}
    for key in KEYS:
        if data.get(key) is not None:
            value = "off" if data[key] is False else str(data[key])
            parse_listen(value, str(source / key) if isinstance(source, Where) else f"{source}: {key}")
            out[key] = value
    return out
