"""How each protocol puts a failure on the client's wire (`hbone.proxy.guard.Responder` implementations).

Which answer to give is decided once, in `hbone.wire.answers`; these only say how it looks on each wire:

- `StreamResponder` — an HTTP/2 stream (HBONE inbound, gateways, H2R, HTTP/2 ingress): `:status` with a one-line
  text/plain body before the response headers went out, RST_STREAM with the error's code after.
- `Http1Responder` — HTTP/1.1 CONNECT / forward proxy: a status line with a text body and `Connection: close`
  (407 carries the Basic challenge); after `200 Connection Established` a TCP abort.
- `SocksResponder` — SOCKS5: the REP code of the answer, then close; after the success reply a TCP abort.
- `TcpResponder` — raw TCP front ends (capture, ingress TCP/TLS, SNI gateway): nothing to say in the protocol but
  an optional TLS alert; a TCP reset (what the client would see had the destination refused) or a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hbone.errors import HboneError
from hbone.net.stream import Stream
from hbone.server import answer_stream
from hbone.wire.answers import CLIENT_CLOSED, Answer
from hbone.wire.httpconnect import error_response
from hbone.wire.socks5 import Socks5Server, State

log = logging.getLogger("hbone.proxy")


class StreamResponder:
    """An HTTP/2 stream: status + text before the response headers, RST_STREAM after. `gateway`: an HTTP ingress
    (the answer's `gateway_status`: 502/504 and the client's own 4xx) rather than an HBONE server."""

    __slots__ = ("describe", "gateway", "stream")

    def __init__(self, stream: Stream, *, gateway: bool = False) -> None:
        self.stream = stream
        self.gateway = gateway
        self.describe: Callable[[str], str] | None = None  # body text from the reason (the record keeps the reason)

    def refuse(self, answer: Answer) -> tuple[int, str]:
        if answer.status == CLIENT_CLOSED:  # cancelled: nobody reads a status; end the stream if it still exists
            self.abort(answer)
            return answer.status, answer.reason
        status = answer.gateway_status if self.gateway else answer.status
        answer_stream(self.stream, status, self.describe(answer.reason) if self.describe else answer.reason)
        return status, answer.reason

    def abort(self, answer: Answer) -> None:
        with contextlib.suppress(HboneError):
            self.stream.reset(answer.h2_code)

    def cause(self) -> BaseException | None:
        return self.stream.error


class _Abortable:
    """A TCP client connection: abort after the success answer."""

    __slots__ = ("writer",)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def _gone(self, answer: Answer) -> bool:
        """The client already went away: nobody to answer, just let the socket go."""
        if answer.status != CLIENT_CLOSED:
            return False
        self.writer.transport.abort()
        return True

    def abort(self, answer: Answer) -> None:
        self.writer.transport.abort()

    def cause(self) -> BaseException | None:
        return None


class Http1Responder(_Abortable):
    """An HTTP/1.1 proxy client: the proxy status (403 policy, 502 upstream, 504 timeout, 4xx) with a text body;
    `gateway`: an HTTP ingress (the answer's `gateway_status`)."""

    __slots__ = ("describe", "gateway", "realm")

    def __init__(self, writer: asyncio.StreamWriter, *, realm: str = "hbone", gateway: bool = False) -> None:
        super().__init__(writer)
        self.realm = realm
        self.gateway = gateway
        self.describe: Callable[[str], str] | None = None  # body text from the reason (the record keeps the reason)

    def refuse(self, answer: Answer) -> tuple[int, str]:
        if self._gone(answer):
            return answer.status, answer.reason
        status = answer.gateway_status if self.gateway else answer.proxy_status
        text = self.describe(answer.reason) if self.describe is not None else answer.reason
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(error_response(status, text, realm=self.realm))
        self.writer.close()  # the transport sends what is buffered, then closes
        return status, answer.reason


class SocksResponder(_Abortable):
    """A SOCKS5 client: the answer's REP code (RFC 1928 §6), then close."""

    __slots__ = ("machine",)

    def __init__(self, machine: Socks5Server, writer: asyncio.StreamWriter) -> None:
        super().__init__(writer)
        self.machine = machine

    def refuse(self, answer: Answer) -> tuple[int, str]:
        if self._gone(answer):
            return answer.status, answer.reason
        replied = self.machine.state is State.REPLY_PENDING  # a reply is only possible once the request was read
        if replied:
            self.machine.reply(answer.socks)
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(self.machine.data_to_send())  # our reply, or the one a protocol violation queued
        self.writer.close()
        return answer.status, f"{answer.socks.name}: {answer.reason}" if replied else answer.reason


class TcpResponder(_Abortable):
    """A raw TCP client: an optional TLS alert chosen by status, then a reset (`reset`) or a close."""

    __slots__ = ("alert", "reset")

    def __init__(
        self, writer: asyncio.StreamWriter, *, reset: bool = False, alert: Callable[[int], bytes | None] | None = None
    ) -> None:
        super().__init__(writer)
        self.reset = reset
        self.alert = alert

    def refuse(self, answer: Answer) -> tuple[int, str]:
        alert = self.alert(answer.status) if self.alert is not None else None  # called for every refusal
        if self._gone(answer):
            return answer.status, answer.reason
        if alert:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.writer.write(alert)
        if self.reset and not alert:
            self.writer.transport.abort()
        else:
            self.writer.close()
        return answer.status, answer.reason
