"""The tunnel guard: one record per tunnel on every path, the answer before or after the success answer."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from hbone.errors import Denied, H2ErrorCode, StreamReset, UpstreamUnreachable
from hbone.net.relay import RelayResult
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.guard import TunnelGuard
from hbone.wire.answers import Answer


class FakeResponder:
    def __init__(self, cause: BaseException | None = None) -> None:
        self.refused: list[Answer] = []
        self.aborted: list[Answer] = []
        self._cause = cause

    def refuse(self, answer: Answer) -> tuple[int, str]:
        self.refused.append(answer)
        return answer.status, f"refused: {answer.reason}"

    def abort(self, answer: Answer) -> None:
        self.aborted.append(answer)

    def cause(self) -> BaseException | None:
        return self._cause


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "hbone.access"]


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hbone.access")


def test_refused_before_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    responder = FakeResponder()
    with TunnelGuard(AccessRecord("inbound"), responder) as guard:
        raise Denied("denied: no policy")
    assert guard.finished and guard.status == 401
    assert [a.status for a in responder.refused] == [401] and not responder.aborted
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (401, "refused: denied: no policy")


def test_broken_after_the_answer_resets_with_the_errors_code(caplog: pytest.LogCaptureFixture) -> None:
    responder = FakeResponder()
    with TunnelGuard(AccessRecord("inbound"), responder) as guard:
        guard.answered(200)
        raise ConnectionResetError(104, "Connection reset by peer")
    assert [a.h2_code for a in responder.aborted] == [H2ErrorCode.CONNECT_ERROR] and not responder.refused
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (200, "broken: Connection reset by peer")


def test_relayed_finishes_once_and_leaving_adds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with TunnelGuard(AccessRecord("socks5")) as guard:
        guard.answered(200)
        guard.relayed(RelayResult(5, 7, "upstream"))
        guard.relayed(RelayResult(1, 1, "downstream", TimeoutError()))  # ignored
        guard.finish(500, "late")  # ignored
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"], rec["bytes_sent"], rec["bytes_received"]) == (200, "ok", 5, 7)
    assert rec["closed_by"] == "upstream"


def test_relay_error_is_recorded_as_broken(caplog: pytest.LogCaptureFixture) -> None:
    with TunnelGuard(AccessRecord("socks5")) as guard:
        guard.answered(200)
        guard.relayed(RelayResult(5, 0, "downstream", StreamReset(8)))
    [rec] = _logged(caplog)
    assert rec["result"] == "broken: stream reset by peer (h2 error code 8)"


def test_leaving_without_anything_is_ok() -> None:
    record = AccessRecord("forward")
    with TunnelGuard(record):
        pass
    assert (record.status, record.result) == (200, "ok")


async def cancel_inside(guard: TunnelGuard, *, answered: bool) -> None:
    """Run a tunnel inside `guard` (answered 200 or not), cancel it while it waits, and see the cancel go on."""
    started = asyncio.Event()

    async def tunnel() -> None:
        with guard:
            if answered:
                guard.answered(200)
            started.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(tunnel())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_is_recorded_and_propagates(caplog: pytest.LogCaptureFixture) -> None:
    responder = FakeResponder(cause=UpstreamUnreachable("connection lost"))
    await cancel_inside(TunnelGuard(AccessRecord("inbound"), responder), answered=True)
    assert [a.h2_code for a in responder.aborted] == [H2ErrorCode.CANCEL]
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (200, "broken: connection lost")  # the cause, not "cancelled"


async def test_cancelled_before_the_answer_is_499(caplog: pytest.LogCaptureFixture) -> None:
    await cancel_inside(TunnelGuard(AccessRecord("socks5")), answered=False)
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (499, "cancelled")


def test_a_bug_is_logged_with_its_traceback_and_answered_500(caplog: pytest.LogCaptureFixture) -> None:
    responder = FakeResponder()
    caplog.set_level(logging.ERROR, logger="hbone.proxy")
    with TunnelGuard(AccessRecord("inbound", src_addr="1.2.3.4:5"), responder):
        raise KeyError("oops")
    [bug] = [r for r in caplog.records if r.name == "hbone.proxy"]
    assert bug.exc_info is not None and "1.2.3.4:5" in bug.getMessage()
    assert responder.refused[0].status == 500


def test_expected_errors_have_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with TunnelGuard(AccessRecord("inbound"), FakeResponder()):
        raise TimeoutError()
    assert not [r for r in caplog.records if r.name == "hbone.proxy"]
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (504, "refused: timed out")


class Live:
    bytes_in = 11
    bytes_out = 3


def test_bytes_come_from_the_live_stream_when_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    with TunnelGuard(AccessRecord("inbound")) as guard:
        guard.answered(200)
        guard.established(Live(), inbound=True)
        raise StreamReset(2)
    [rec] = _logged(caplog)
    assert (rec["bytes_sent"], rec["bytes_received"]) == (11, 3)


def test_sinks_hear_one_open_and_one_close(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class Counting:
        def opened(self, record: AccessRecord) -> None:
            events.append("opened")

        def closed(self, record: AccessRecord) -> None:
            events.append("closed")

    remove = accesslog.add_sink(Counting())
    try:
        with TunnelGuard(AccessRecord("inbound"), FakeResponder()) as guard:
            guard.answered(200)
            guard.established(Live(), inbound=True)
            guard.fail(ConnectionResetError())
            raise TimeoutError()  # a second failure after the record finished changes nothing
    finally:
        remove()
    assert events == ["opened", "closed"]


def test_a_responder_that_fails_still_leaves_one_record(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeResponder):
        def refuse(self, answer: Answer) -> tuple[int, str]:
            raise RuntimeError("transport gone")

    with pytest.raises(RuntimeError), TunnelGuard(AccessRecord("socks5"), Broken()):
        raise UpstreamUnreachable("no route to host")
    [rec] = _logged(caplog)
    assert (rec["status"], rec["result"]) == (503, "no route to host")
