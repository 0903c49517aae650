"""The CLI's direct access-record line: the same bytes as through logging, used only when it is the sole handler."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone import logsetup
from hbone.proxy.accesslog import AccessRecord

STAMP = re.compile(r'^\{"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",')


def _iso(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False))
def test_stamp_is_datetimes_text(created: float) -> None:
    assert logsetup._stamp(created) == _iso(created)


@pytest.mark.parametrize("created", [0.0, 1.0, 1.9995, 1.9999994, 1.9999995, 1.9999996, 1_764_806_399.9999999])
def test_stamp_rounds_like_datetime_at_second_edges(created: float) -> None:
    assert logsetup._stamp(created) == _iso(created)
    assert logsetup._stamp(created + 1) == _iso(created + 1)  # the cached second is replaced, not reused


def _record() -> AccessRecord:
    rec = AccessRecord("inbound", src_identity="spiffe://td/ns/a/sa/é", src_addr="[::1]:5", dst_addr="10.0.0.1:80")
    rec.bytes_sent, rec.policy, rec.started = 7, 'quote"d', 99.5  # a fixed duration (the clock is patched)
    return rec


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(logsetup.ACCESS_LOGGER)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


def _line(logger: logging.Logger, handler: logging.StreamHandler[io.StringIO], rec: AccessRecord) -> str:
    handler.setFormatter(logsetup.LineFormatter("json"))
    logger.addHandler(handler)
    try:
        rec.finish(200, "ok")
    finally:
        logger.removeHandler(handler)
    return handler.stream.getvalue()


def test_direct_line_equals_the_logging_line(access_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "monotonic", lambda: 100.0)  # the same duration_ms for both records
    direct = _line(access_logger, logsetup._Handler(io.StringIO()), _record())
    plain = _line(access_logger, logging.StreamHandler(io.StringIO()), _record())
    assert STAMP.match(direct) and STAMP.match(plain)
    assert direct.endswith("\n") and direct.count("\n") == 1
    assert STAMP.sub("", direct) == STAMP.sub("", plain)
    assert json.loads(direct)["src_identity"] == "spiffe://td/ns/a/sa/é"


def test_direct_line_is_not_used_when_someone_else_listens(
    access_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = logsetup._Handler(io.StringIO())
    ours.setFormatter(logsetup.LineFormatter("text"))
    monkeypatch.setattr(ours, "write_access", lambda message: pytest.fail("bypassed another handler"))
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign,assignment]
    access_logger.addHandler(ours)
    access_logger.addHandler(other)
    _record().finish(200, "ok")
    assert len(seen) == 1 and seen[0].access["status"] == 200  # type: ignore[attr-defined]
    access_logger.removeHandler(other)
    access_logger.addFilter(lambda r: True)  # a filter on our logger must see every record
    _record().finish(200, "ok")
    assert ours.stream.getvalue().count("\n") == 2


def test_direct_line_declines_a_handler_that_would_format_it_otherwise() -> None:
    handler = logsetup._Handler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert not handler.write_access('{"a":1}')
    handler.setFormatter(logsetup.LineFormatter("text"))
    handler.setLevel(logging.WARNING)
    assert not handler.write_access('{"a":1}')
    assert handler.stream.getvalue() == ""


def test_a_broken_stream_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("stderr is gone")

    handler = logsetup._Handler(Broken())
    handler.setFormatter(logsetup.LineFormatter("text"))
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    assert handler.write_access('{"a":1}')
    assert [r.getMessage() for r in reported] == ['{"a":1}']


class _Writes(io.StringIO):
    """A stream that remembers each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def _handler(stream: io.StringIO) -> logsetup._Handler:
    handler = logsetup._Handler(stream)
    handler.setFormatter(logsetup.LineFormatter("text"))
    return handler


def test_records_of_one_loop_iteration_are_written_together() -> None:
    stream = _Writes()
    handler = _handler(stream)

    async def main() -> None:
        assert handler.write_access('{"a":1}') and handler.write_access('{"a":2}')
        assert stream.calls == []  # gathered until the loop's next iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(stream.calls) == 1 and stream.calls[0].count("\n") == 2
        handler.write_access('{"a":3}')

    asyncio.run(main())
    assert len(stream.calls) == 2  # the last one went out before the loop closed
    assert [json.loads(line)["a"] for line in stream.getvalue().splitlines()] == [1, 2, 3]


def test_other_lines_and_flush_write_the_gathered_records_first() -> None:
    stream = _Writes()
    handler = _handler(stream)
    logger = logging.getLogger("hbone.test.order")
    logger.addHandler(handler)
    logger.propagate = False
    try:

        async def main() -> None:
            handler.write_access('{"a":1}')
            logger.warning("after the record")
            handler.write_access('{"a":2}')
            handler.flush()
            assert stream.getvalue().count("\n") == 3

        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert '"a":1' in lines[0] and "after the record" in lines[1] and '"a":2' in lines[2]


def test_outside_a_loop_records_are_written_at_once() -> None:
    stream = _Writes()
    handler = _handler(stream)
    assert handler.write_access('{"a":1}')
    assert len(stream.calls) == 1 and stream.getvalue().endswith("}\n")
