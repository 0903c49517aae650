"""Reading shorthand config items: snake/camel keys, typed field access, enums by name; errors at the line."""

from __future__ import annotations

import re
from typing import Any

from hbone.configtext import unknown_keys_text

from .yamldoc import Located

DEFAULT_NAMESPACE = "default"
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(key: str) -> str:
    return _CAMEL.sub(r"_\1", key).lower()


def fields(item: Located, allowed: set[str], what: str) -> dict[str, Located]:
    """The item's keys in snake_case; an unknown key is an error at its own line."""
    if not isinstance(item.value, dict):
        raise item.error(f"a {what} must be a mapping, got {type(item.value).__name__}")
    out: dict[str, Located] = {}
    for key in item.value:
        name = snake(str(key))
        if name not in allowed:
            reason = unknown_keys_text({name: None}, sorted(allowed), noun=f"{what} field")
            raise item.error(f"{reason} (as written: {key!r})" if name != key else str(reason), key)
        out[name] = item.child(key)
    return out


def text(f: dict[str, Located], key: str, default: str = "") -> str:
    loc = f.get(key)
    if loc is None or loc.value is None:
        return default
    if not isinstance(loc.value, (str, int)) or isinstance(loc.value, bool):
        raise loc.error(f"{key} must be a string")
    return str(loc.value)


def strings(f: dict[str, Located], key: str) -> list[str]:
    loc = f.get(key)
    if loc is None or loc.value is None:
        return []
    if isinstance(loc.value, (str, int)):
        return [str(loc.value)]
    if not isinstance(loc.value, list) or not all(isinstance(v, (str, int)) for v in loc.value):
        raise loc.error(f"{key} must be a list of strings")
    return [str(v) for v in loc.value]


def enum(loc: Located, enum_type: Any, what: str) -> int:
    names = [n for n in enum_type.keys()]  # noqa: SIM118 - protobuf enum wrapper, not a dict
    value = str(loc.value).upper().replace("-", "_")
    if value not in names:
        raise loc.error(f"unknown {what} {loc.value!r} (one of {', '.join(names)})")
    return int(enum_type.Value(value))
