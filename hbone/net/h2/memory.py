"""Per-connection memory of the `h2` library, for servers that hold thousands of mostly idle connections.

h2's `Settings` keeps every setting in its own `collections.deque` (one 64-slot block, ~700 bytes) so that a value
and its not-yet-acknowledged successors can queue. Two Settings objects of 7 or 8 settings each cost ~10 KiB per
connection, most of an idle xDS client's HTTP/2 state (tools/bench/README-xds-results.md). A setting almost always
holds one value, so a one-element list with `popleft()` stores the same queue in ~70 bytes.

`compact_settings` converts an existing `h2.settings.Settings` in place; the guard test
(tests/unit/test_net_h2memory.py) fails if h2 stops keeping `_settings` as a dict of queues.
"""

from __future__ import annotations

from typing import Any

from h2.settings import SettingCodes, Settings


class _Queue(list[Any]):
    """The deque operations `Settings` uses (len, [0], append, popleft) on a list: tiny when it holds one value."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class CompactSettings(Settings):  # type: ignore[misc]
    """`Settings` whose per-setting queues are `_Queue`s; only creating a new key differs from h2."""

    def __setitem__(self, key: SettingCodes | int, value: int) -> None:
        if key not in self._settings:
            # h2 seeds an unknown key with None so that reads raise KeyError until it is acknowledged.
            self._settings[key] = _Queue([None])
        super().__setitem__(key, value)


def compact_settings(settings: Settings) -> None:
    settings._settings = {k: _Queue(v) for k, v in settings._settings.items()}
    settings.__class__ = CompactSettings
