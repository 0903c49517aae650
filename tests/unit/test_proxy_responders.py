"""How each protocol puts an answer on the client's wire (hbone.proxy.responders), without sockets."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, cast

from hbone.errors import ClientClosed, Denied, UpstreamUnreachable
from hbone.proxy.guard import Responder
from hbone.proxy.httpproxy import ProxyAuthRequired
from hbone.proxy.responders import Http1Responder, SocksResponder, TcpResponder
from hbone.proxy.routing import RouteDenied
from hbone.wire.answers import answer_for
from hbone.wire.socks5 import Socks5Server, encode_greeting, encode_request


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeWriter:
    """The part of asyncio.StreamWriter the responders use."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.transport = FakeTransport()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True


def writer() -> tuple[FakeWriter, asyncio.StreamWriter]:
    fake = FakeWriter()
    return fake, cast(asyncio.StreamWriter, cast(Any, fake))


def test_http1_proxy_answers_the_proxy_status_with_the_reason() -> None:
    fake, w = writer()
    responder = Http1Responder(w, realm="mesh")
    status, result = responder.refuse(answer_for(ProxyAuthRequired("proxy authentication required")))
    assert (status, result) == (407, "proxy authentication required")
    assert fake.data.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'Proxy-Authenticate: Basic realm="mesh"' in fake.data and fake.closed


def test_http1_ingress_answers_502_and_names_the_target() -> None:
    fake, w = writer()
    responder = Http1Responder(w, gateway=True)
    responder.describe = lambda reason: f"upstream svc:80: {reason}"
    status, result = responder.refuse(answer_for(Denied("denied: no policy")))
    assert (status, result) == (502, "denied: no policy")  # the record keeps the reason, the body names the target
    assert fake.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and fake.data.endswith(
        b"upstream svc:80: denied: no policy\n"
    )


def test_socks_replies_with_the_answers_code_once_the_request_was_read() -> None:
    machine = Socks5Server()
    machine.feed(encode_greeting())
    machine.data_to_send()
    machine.feed(encode_request("10.0.0.1", 80))
    machine.data_to_send()
    fake, w = writer()
    status, result = SocksResponder(machine, w).refuse(answer_for(UpstreamUnreachable("no route")))
    assert fake.data[:2] == b"\x05\x04" and fake.closed  # HOST_UNREACHABLE
    assert (status, result) == (503, "HOST_UNREACHABLE: no route")


def test_socks_before_the_request_only_closes() -> None:
    fake, w = writer()
    status, result = SocksResponder(Socks5Server(), w).refuse(answer_for(TimeoutError()))
    assert fake.data == b"" and fake.closed and (status, result) == (504, "timed out")


def test_a_client_that_went_away_is_not_answered() -> None:
    makers: list[Callable[[asyncio.StreamWriter], Responder]] = [
        Http1Responder,
        TcpResponder,
        functools.partial(SocksResponder, Socks5Server()),
    ]
    for make in makers:
        fake, w = writer()
        status, _ = make(w).refuse(answer_for(ClientClosed("gone")))
        assert status == 499 and fake.data == b"" and fake.transport.aborted, make


def test_tcp_sends_the_alert_its_callback_picks_then_closes() -> None:
    seen: list[int] = []

    def alert(status: int) -> bytes | None:
        seen.append(status)
        return b"\x15alert" if status == 403 else None

    fake, w = writer()
    TcpResponder(w, reset=True, alert=alert).refuse(answer_for(RouteDenied("no route for that name")))
    assert fake.data == b"\x15alert" and fake.closed and not fake.transport.aborted
    fake, w = writer()
    TcpResponder(w, reset=True, alert=alert).refuse(answer_for(Denied("denied")))  # no alert: a reset
    assert fake.data == b"" and fake.transport.aborted
    assert seen == [403, 401]
