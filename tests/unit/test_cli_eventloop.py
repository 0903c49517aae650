"""`hbone` / `microxds` run their commands on uvloop when it is installed (DESIGN §4); HBONE_NO_UVLOOP opts out."""

from __future__ import annotations

import asyncio

import pytest

from hbone.cli import event_loop_policy


def _loop_module() -> str:
    async def probe() -> str:
        return type(asyncio.get_running_loop()).__module__

    return asyncio.run(probe())


def test_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("HBONE_NO_UVLOOP", raising=False)
    before = asyncio.get_event_loop_policy()
    with event_loop_policy() as name:
        assert name == "uvloop"
        assert _loop_module().startswith("uvloop")
    assert asyncio.get_event_loop_policy() is before  # in-process callers (these tests) are left alone


@pytest.mark.parametrize("value", ["1", "yes"])
def test_opt_out(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HBONE_NO_UVLOOP", value)
    with event_loop_policy() as name:
        assert name == "asyncio"
        assert _loop_module().startswith("asyncio")


def test_opt_out_zero_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HBONE_NO_UVLOOP", "0")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        expected = "asyncio"
    else:
        expected = "uvloop"
    with event_loop_policy() as name:
        assert name == expected
