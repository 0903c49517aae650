"""One access-log record per tunnel: the fields, the JSON line, and no work when nobody listens at INFO."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord


def test_as_dict_has_every_field_but_the_start_times() -> None:
    record = AccessRecord("inbound", src_identity="spiffe://td/ns/a/sa/b", dst_addr="10.0.0.1:80", bytes_sent=5)
    expected = dataclasses.asdict(record)
    del expected["started"], expected["opened_at"]
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}  # live-tunnel state for the admin port
    assert record.as_dict() == expected
    assert list(record.as_dict()) == list(expected)  # same order as the dataclass, as before


def test_finish_logs_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    record = AccessRecord("inbound", mode="POST", src_addr="1.2.3.4:5")
    with caplog.at_level(logging.INFO, logger="hbone.access"):
        record.finish(200, "ok")
    [entry] = [r for r in caplog.records if r.name == "hbone.access"]
    fields = json.loads(entry.getMessage())
    assert fields == entry.access  # type: ignore[attr-defined]
    assert (fields["status"], fields["result"], fields["mode"]) == (200, "ok", "POST")
    assert "started" not in fields and fields["duration_ms"] >= 0


def test_finish_skips_formatting_when_info_is_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = AccessRecord("inbound")
    monkeypatch.setattr(AccessRecord, "as_dict", lambda self: pytest.fail("formatted a record nobody logs"))
    with caplog.at_level(logging.WARNING, logger="hbone.access"):
        record.finish(503, "upstream refused")
    assert record.status == 503 and record.result == "upstream refused"
    assert not [r for r in caplog.records if r.name == "hbone.access"]


_values = st.one_of(
    st.none(),
    st.text(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities too: json writes them as NaN / Infinity
)


@given(st.dictionaries(st.text(), _values, max_size=16))
def test_record_encoder_writes_what_json_writes(record: dict[str, object]) -> None:
    assert accesslog._encode(record) == json.dumps(record, separators=(",", ":"))


_maybe_text = st.one_of(st.none(), st.text(), st.sampled_from(["ok", "spiffe://td/ns/a/sa/b", 'quote"d', "é"]))
_numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.floats())


@given(
    st.lists(_maybe_text, min_size=10, max_size=10),
    st.lists(_numbers, min_size=3, max_size=3),
    st.one_of(st.floats(), st.integers(min_value=-(2**60), max_value=2**60)),
)
def test_record_json_is_what_json_writes(texts: list[str | None], numbers: list[object], ms: object) -> None:
    record = AccessRecord(*texts[:2])  # type: ignore[arg-type]
    (record.src_identity, record.dst_identity, record.src_addr, record.dst_addr, record.result, record.policy,
     record.request, record.closed_by) = texts[2:]  # fmt: skip
    record.bytes_sent, record.bytes_received, record.status = numbers  # type: ignore[assignment]
    record.duration_ms = ms  # type: ignore[assignment]
    for _ in range(2):  # the second time from the remembered strings
        assert record.json() == json.dumps(record.as_dict(), separators=(",", ":"))


def test_quoted_memo_keeps_short_strings_only() -> None:
    """Field values are peer text: a long one is quoted every time and never remembered."""
    long = "r" * 1000
    assert accesslog._q(long) == json.dumps(long)
    assert long not in accesslog._quoted
    assert accesslog._q("inbound") == '"inbound"' and "inbound" in accesslog._quoted
