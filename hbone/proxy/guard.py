"""The tunnel guard: one owner for a tunnel's access record and for its error answer, on every path.

Every front end and gateway runs a tunnel (or one HTTP request) inside a `TunnelGuard`:

    with TunnelGuard(AccessRecord("socks5", ...), SocksResponder(machine, writer)) as guard:
        upstream = await dialer.open(target, record=guard.record)   # any failure: raise it
        guard.answered(200)                                          # the success answer went out
        guard.established(upstream.pipe, inbound=False)
        result = await relay(...)
        guard.relayed(result)                                        # bytes, who ended first, what broke it

An exception leaving the block is answered on the client's wire by the `Responder` (what to answer comes from the
one table, `hbone.wire.answers`): before the success answer an error status / reply / TLS alert, after it an
RST_STREAM with the error's HTTP/2 code or a TCP abort. The record is finished exactly once — by `relayed`, by
`fail`, by the exception, or by leaving the block — and cancellation (the client's connection went away) is
recorded too, then re-raised. Errors are swallowed once answered (a tunnel's failure is not the listener's);
one that is not a network or protocol error is a bug and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Protocol

from hbone.errors import ClientClosed, HboneError, RequestTimeout
from hbone.net.relay import RelayResult
from hbone.proxy.accesslog import AccessRecord
from hbone.wire.answers import Answer, answer_for, reason_of

log = logging.getLogger("hbone.proxy")

#: Failures a tunnel meets in normal life; anything else reaching a guard is a bug (logged with a traceback).
_EXPECTED = (HboneError, OSError, EOFError, ssl.SSLError)


class Responder(Protocol):
    """How one protocol puts an `Answer` on the client's wire."""

    def refuse(self, answer: Answer) -> tuple[int, str]:
        """Nothing was answered yet: send the error answer and close. Returns (status, result) for the record."""
        ...

    def abort(self, answer: Answer) -> None:
        """The success answer already went out: break the tunnel (stream reset, TCP abort)."""
        ...

    def cause(self) -> BaseException | None:
        """What broke the client's side, if known (reported instead of a bare "cancelled")."""
        ...


class TunnelGuard:
    """Owns one `AccessRecord` and answers the tunnel's failure; a context manager (see the module doc)."""

    __slots__ = ("_done", "record", "responder", "status")

    def __init__(self, record: AccessRecord, responder: Responder | None = None) -> None:
        self.record = record
        self.responder = responder
        #: The status that went out on the wire (None until the success answer, or a refusal, was sent).
        self.status: int | None = None
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def answered(self, status: int = 200) -> None:
        """The success answer went out: later failures break the tunnel instead of answering a status."""
        self.status = status

    def established(self, stream: object, *, inbound: bool) -> None:
        """The tunnel relays through `stream` from now on (live byte counts for the admin port)."""
        self.record.established(stream, inbound=inbound)

    def relayed(self, result: RelayResult) -> None:
        """The relay ended: bytes each way (`sent` towards the destination), which side ended first and what broke
        it (None: a clean close both ways). Finishes the record."""
        if self._done:
            return
        record = self.record
        record.bytes_sent, record.bytes_received, record.closed_by = result.sent, result.received, result.ended_first
        status = self.status if self.status is not None else 200
        self.finish(status, "ok" if result.error is None else f"broken: {reason_of(result.error)}")

    def fail(self, exc: BaseException) -> Answer:
        """Answer `exc` on the wire (status before the success answer, reset after) and finish the record."""
        answer = answer_for(exc)
        if self._done:
            return answer
        responder = self.responder
        if self.status is None:
            status, result = answer.status, answer.reason
            try:
                if responder is not None:
                    status, result = responder.refuse(answer)
            finally:  # the record is finished even if answering failed
                self.status = status
                self.finish(status, result)
            return answer
        try:
            if responder is not None:
                responder.abort(answer)
                cause = responder.cause() if not isinstance(exc, Exception) else None
                if cause is not None:
                    answer = answer_for(cause)
        finally:
            self.finish(self.status, f"broken: {answer.reason}")
        return answer

    def finish(self, status: int, result: str) -> None:
        """Finish the record (once; later calls do nothing)."""
        if not self._done:
            self._done = True
            self.record.finish(status, result)

    def __enter__(self) -> TunnelGuard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            if not self._done:
                self.finish(self.status if self.status is not None else 200, "ok")
            return False
        if isinstance(exc, Exception) and not isinstance(exc, _EXPECTED):
            log.error("%s tunnel from %s failed", self.record.direction, self.record.src_addr, exc_info=exc)
        self.fail(exc)
        return isinstance(exc, Exception)  # cancellation (and KeyboardInterrupt, SystemExit) goes on


@asynccontextmanager
async def client_phase(what: str, seconds: float) -> AsyncIterator[None]:
    """Reading the client's request (`what`: "SOCKS handshake", "request head"…) within `seconds`: a timeout
    is the client's (408, `RequestTimeout`, not an upstream 504) and a broken connection means it went away (499)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as e:
        raise RequestTimeout(f"{what} not complete within {seconds:g}s") from e
    except (ConnectionError, EOFError) as e:
        raise ClientClosed(f"client connection failed during the {what}: {reason_of(e)}") from e
