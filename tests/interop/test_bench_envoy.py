"""Smoke test of the Envoy comparison bench (tools/bench/hbone_envoy_bench.py): its Envoy and our cases start,
every case produces figures and the CPU of every process, and the same-run ratio table is printed.

Bounded: `--quick` with one-second cases and two pairs (ours, Envoy defaults), about 15 s on an idle machine.
Nothing here depends on how fast anything is: only that each case ran and counted work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.envoy import envoy_validate, require_envoy
from tests.peers.process import REPO_ROOT, loopback_env, require_binary

pytestmark = pytest.mark.timeout(120)

BENCH = REPO_ROOT / "tools" / "bench" / "hbone_envoy_bench.py"


def test_envoy_bench_quick_produces_figures(tmp_path: Path) -> None:
    env = loopback_env({"HBONE_ENVOY": os.fspath(require_envoy())})
    for tool in ("iperf3", "wrk", "nginx"):
        require_binary(tool)
    out = tmp_path / "runs.json"
    argv = [sys.executable, os.fspath(BENCH), "--quick", "--pairs", "ours", "envoy", "--rr-count", "200",
            "--json", os.fspath(out)]  # fmt: skip
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=100, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    for pair in ("ours", "envoy"):
        bulk, rr, rate = (runs[pair][k] for k in ("bulk", "rr", "rate"))
        assert len(bulk) == len(rr) == len(rate) == 1, runs[pair]
        assert bulk[0]["bytes"] > 0 and bulk[0]["seconds"] > 0
        assert rr[0]["n"] == 200 and 0 < rr[0]["p50"] <= rr[0]["p99"]
        assert rate[0]["ops"] > 0 and rate[0]["errors"] == 0
        for run in (bulk[0], rr[0], rate[0]):
            assert set(run["cpu"]) == {"client proxy", "server proxy", "backend", "load generator"}
            assert set(run["sys"]) == {"client proxy", "server proxy", "backend"}
        for run in (bulk[0], rate[0]):  # (200 round trips may take less than one clock tick of a proxy's CPU)
            assert run["cpu"]["client proxy"] > 0 and run["cpu"]["server proxy"] > 0
    assert "ours/envoy" in proc.stdout  # the same-run ratio table was printed


def test_matched_envoy_configs_are_valid(tmp_path: Path) -> None:
    """The like-for-like variant's configs (Envoy's windows and buffers set to ours) pass Envoy's own validation,
    and carry our current settings."""
    require_envoy()
    sys.path.insert(0, os.fspath(BENCH.parent))
    try:
        import _hbone_native as native
    finally:
        sys.path.remove(os.fspath(BENCH.parent))
    from hbone.net.settings import H2Settings
    from hbone.testing import TestCA

    ours = H2Settings()
    assert native.matched_buffers() == {
        "initial_stream_window_size": ours.initial_stream_window,
        "initial_connection_window_size": ours.connection_window,
        "per_connection_buffer_limit_bytes": ours.max_send_buffer,
    }
    certs = TestCA().write(tmp_path / "certs", "bench", "server")
    targets = {"bulk": "127.0.0.1:1", "rr": "127.0.0.1:2", "rate": "127.0.0.1:3"}
    for cfg in (native.envoy_server(certs, matched=True),
                native.envoy_client(certs, targets, "127.0.0.1:4", "spiffe://x/y", matched=True)):  # fmt: skip
        result = envoy_validate(cfg)
        assert result.ok, result.output[-2000:]
        assert json.dumps(ours.initial_stream_window) in json.dumps(cfg)
