"""Compact h2 settings: same behaviour as h2's own `Settings`, a fraction of the memory."""

from __future__ import annotations

import collections
import sys

import pytest
from h2.settings import SettingCodes, Settings
from hypothesis import given
from hypothesis import strategies as st

from hbone.net.h2.memory import CompactSettings, compact_settings
from hbone.net.h2.tuning import make_h2
from hbone.net.settings import H2Settings


def test_guard_h2_still_keeps_a_dict_of_queues() -> None:
    # If this fails, h2 changed how Settings stores values: re-check hbone/net/h2memory.py before upgrading.
    s = Settings(client=False)
    assert isinstance(s._settings, dict)
    assert all(isinstance(v, collections.deque) for v in s._settings.values())


def test_connections_use_compact_settings() -> None:
    conn = make_h2(client=False, settings=H2Settings.server())
    assert isinstance(conn.local_settings, CompactSettings)
    assert isinstance(conn.remote_settings, CompactSettings)
    conn.initiate_connection()
    conn.local_settings.acknowledge()
    assert conn.local_settings.initial_window_size == 65535


def test_smaller() -> None:
    stock = Settings(client=False)
    small = Settings(client=False)
    compact_settings(small)
    size = lambda s: sum(sys.getsizeof(v) for v in s._settings.values())  # noqa: E731
    assert size(small) * 4 < size(stock)


_KEYS = [
    SettingCodes.HEADER_TABLE_SIZE,
    SettingCodes.INITIAL_WINDOW_SIZE,
    SettingCodes.MAX_FRAME_SIZE,
    SettingCodes.MAX_CONCURRENT_STREAMS,
    SettingCodes.MAX_HEADER_LIST_SIZE,
    0xF0,
]
_VALUES = {SettingCodes.MAX_FRAME_SIZE: st.integers(16384, 2**24 - 1)}
_op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(_KEYS), st.integers(0, 2**20)),
    st.tuples(st.just("ack"), st.none(), st.none()),
    st.tuples(st.just("get"), st.sampled_from(_KEYS), st.none()),
)


def _apply(s: Settings, op: tuple[str, int | None, int | None]) -> object:
    kind, key, value = op
    try:
        if kind == "set":
            if key == SettingCodes.MAX_FRAME_SIZE:
                value = max(16384, min(int(value or 0), 2**24 - 1))
            s[key] = value
            return None
        if kind == "ack":
            return sorted((int(k), c.original_value, c.new_value) for k, c in s.acknowledge().items())
        return s[key]
    except (KeyError, Exception) as e:
        return type(e).__name__


@given(st.booleans(), st.lists(_op, max_size=40))
def test_same_behaviour_as_h2(client: bool, ops: list[tuple[str, int | None, int | None]]) -> None:
    stock, small = Settings(client=client), Settings(client=client)
    compact_settings(small)
    for op in ops:
        assert _apply(stock, op) == _apply(small, op)
    assert [_apply(stock, ("get", k, None)) for k in _KEYS] == [_apply(small, ("get", k, None)) for k in _KEYS]
    assert len(stock) == len(small) and list(stock) == list(small)


@pytest.mark.parametrize("client", [True, False])
def test_unknown_key_is_keyerror_until_acknowledged(client: bool) -> None:
    s = Settings(client=client)
    compact_settings(s)
    s[0xF0] = 7
    with pytest.raises(KeyError):
        s[0xF0]
    s.acknowledge()
    assert s[0xF0] == 7


async def test_driver_keeps_settings_compact_after_connection_made() -> None:
    # connection_made installs a new local Settings with our values; it must be compacted as well.
    from hbone.net.connection import H2Connection
    from tests.fakes import FakeTransport

    for client in (True, False):
        conn = H2Connection(client=client, settings=H2Settings.server(ping_interval=None, engine="h2"))
        conn.connection_made(FakeTransport())
        assert isinstance(conn._engine._h2.local_settings, CompactSettings)
        assert isinstance(conn._engine._h2.remote_settings, CompactSettings)
        assert conn._engine._h2.local_settings.max_concurrent_streams == 200


async def test_header_table_size_is_advertised() -> None:
    from hbone.errors import ConfigError
    from hbone.net.connection import H2Connection
    from tests.fakes import FakeTransport

    for size in (4096, 0):
        settings = H2Settings.server(ping_interval=None, header_table_size=size, engine="h2")  # h2's Settings below
        conn = H2Connection(client=False, settings=settings)
        transport = FakeTransport()
        conn.connection_made(transport)
        assert conn._engine._h2.local_settings.header_table_size == size
        length = int.from_bytes(transport.out[:3], "big")  # the server's first frame is its SETTINGS
        payload = bytes(transport.out[9 : 9 + length])
        sent = {int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                for i in range(0, length, 6)}  # fmt: skip
        assert sent[SettingCodes.HEADER_TABLE_SIZE] == size
    with pytest.raises(ConfigError):
        H2Settings(header_table_size=-1)
