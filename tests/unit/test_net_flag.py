"""streamtypes.Flag: asyncio.Event's semantics on a loop given up front."""

from __future__ import annotations

import asyncio

import pytest

from hbone.net.streamtypes import Flag

pytestmark = pytest.mark.timeout(10)


async def test_wait_returns_once_set_and_at_once_after() -> None:
    flag = Flag(asyncio.get_running_loop())
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not flag.is_set() and not any(w.done() for w in waiters)
    flag.set()
    flag.set()  # a second set changes nothing
    await asyncio.gather(*waiters)
    assert flag.is_set()
    await flag.wait()


async def test_a_cancelled_waiter_is_forgotten_and_the_others_still_wake() -> None:
    flag = Flag(asyncio.get_running_loop())
    gone = asyncio.ensure_future(flag.wait())
    stays = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert flag._waiters is not None and len(flag._waiters) == 1
    flag.set()
    await stays
