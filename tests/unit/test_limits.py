"""hbone.limits: process-wide trip counts and the once-per-connection log line."""

from __future__ import annotations

import logging

import pytest

from hbone import limits


def test_counts_every_trip_and_lists_known_limits() -> None:
    before = limits.trip_counts()
    assert set(limits.LIMITS) <= set(before)
    limits.record_trip("h2_rapid_reset")
    limits.record_trip("h2_rapid_reset")
    limits.record_trip("test_only_limit")
    after = limits.trip_counts()
    assert after["h2_rapid_reset"] == before["h2_rapid_reset"] + 2
    assert after["test_only_limit"] == before.get("test_only_limit", 0) + 1


def test_trip_log_logs_once_per_connection_and_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hbone.limits")
    before = limits.trip_counts()["h2_control_flood"]
    first, second = limits.TripLog("10.0.0.1:5"), limits.TripLog("10.0.0.2:6")
    for _ in range(5):
        first.trip("h2_control_flood", "outbound buffer over 1 MiB")
    second.trip("h2_control_flood")
    first.trip("h2_pending_streams")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "h2_control_flood" in lines[0] and "10.0.0.1:5" in lines[0] and "1 MiB" in lines[0]
    assert limits.trip_counts()["h2_control_flood"] == before + 6


def test_unattached_trips_are_counted_but_logged_rarely(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hbone.limits")
    before = limits.trip_counts()["max_connections"]
    for _ in range(10):
        limits.trip_unattached("max_connections", "127.0.0.1:1")
    assert limits.trip_counts()["max_connections"] == before + 10
    assert len([r for r in caplog.records if "max_connections" in r.getMessage()]) <= 1
