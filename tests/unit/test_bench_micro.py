"""The in-process benchmarks at a tiny size, so a change that breaks one fails here rather than at the next
measurement. `tools/bench/h2_micro.py` on every engine: it drives connections through public API only (it used to
reach into the h2 engine's private connection, which would have broken it silently when that moved).
`tools/bench/hpack_micro.py`: every case with every encoder."""

from __future__ import annotations

import asyncio

import pytest

from hbone.net.settings import ENGINES, MiB
from tools.bench import hpack_micro
from tools.bench.h2_micro import churn, receive, send


@pytest.mark.parametrize("engine", ENGINES)
def test_every_case_runs_on_every_engine(engine: str) -> None:
    # Each case checks its own outcome (every byte received or written, every tunnel answered) before it returns.
    assert asyncio.run(receive(2 * MiB, True, engine)) > 0
    assert asyncio.run(send(1 * MiB, True, engine)) > 0
    assert asyncio.run(churn(100, engine)) > 0


def test_baseline_runs_without_the_fast_paths() -> None:
    assert asyncio.run(receive(2 * MiB, False)) > 0
    assert asyncio.run(send(1 * MiB, False)) > 0


@pytest.mark.parametrize("case", sorted(hpack_micro.CASES))
def test_hpack_micro_cases(case: str) -> None:
    sizes = {}
    for name, make in (("native", hpack_micro.native), ("hpack", hpack_micro.stock)):
        encode, decode, sizes[name] = hpack_micro.run(make, hpack_micro.CASES[case], 2100)
        assert encode > 0 and decode >= 0
    assert sizes["native"] <= 2 * sizes["hpack"]  # both index what repeats (bytes of warm blocks)
