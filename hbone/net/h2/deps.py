"""The HTTP/2 libraries' supported versions, checked once where they are first imported (`hbone.net`).

The driver reaches into h2's state machines (h2tuning, h2fastdata, h2headers), so only the versions CI runs are
allowed: with h2 4.1/4.2 every connection crashed and with 4.3 every CONNECT was refused. `pyproject.toml`
declares the same ranges; `tools/h2matrix.py` runs the driver tests against the lowest and highest of them. A
version outside them fails the import with one line naming the range (and the CLIs print just that line).
"""

from __future__ import annotations

import importlib

from hbone.errors import UnsupportedDependency

#: (module, lowest allowed, first not allowed): pyproject.toml says `h2>=4.4,<4.5` etc.
SUPPORTED: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = (
    ("h2", (4, 4), (4, 5)),
    ("hyperframe", (6, 1), (6, 2)),
    ("hpack", (4, 2), (4, 3)),
)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def spec(name: str) -> str:
    """The pip requirement for `name`, e.g. `h2>=4.4,<4.5`."""
    for mod, low, high in SUPPORTED:
        if mod == name:
            return f"{mod}>={_dotted(low)},<{_dotted(high)}"
    raise KeyError(name)


def check() -> None:
    """Raise UnsupportedDependency (one line) unless h2, hyperframe and hpack are within SUPPORTED."""
    for name, low, high in SUPPORTED:
        version = str(getattr(importlib.import_module(name), "__version__", "0"))
        if not low <= _release(version) < high:
            raise UnsupportedDependency(
                f"hbone needs {spec(name)} but {name} {version} is installed: pip install '{spec(name)}'"
            )
