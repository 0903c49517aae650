"""The one exception → wire answer table (hbone.wire.answers), for every error class we raise and foreign ones."""

from __future__ import annotations

import asyncio
import errno
import ssl

import pytest

import hbone.proxy.frontend
import hbone.proxy.httpproxy
import hbone.proxy.routing
from hbone import errors
from hbone.errors import H2ErrorCode, HboneError
from hbone.wire.answers import CLIENT_CLOSED, MAX_REASON, answer_for, proxy_status_for, socks_reply_for
from hbone.wire.socks5 import ReplyCode


def _all_subclasses(cls: type[HboneError]) -> list[type[HboneError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def _instance(cls: type[HboneError]) -> HboneError:
    if issubclass(cls, errors.ConnectRefused):
        return cls(503, "nope")  # type: ignore[call-arg]
    if issubclass(cls, errors.StreamReset):
        return cls(int(H2ErrorCode.CANCEL))  # type: ignore[call-arg]
    if cls.__name__ == "IdleTimeout":
        return cls(3600.0)  # type: ignore[arg-type]
    if issubclass(cls, errors.GrpcError):
        return cls(errors.GrpcStatus.UNAVAILABLE, "down")  # type: ignore[call-arg]
    return cls("why it failed")


ALL_ERRORS = list(dict.fromkeys([HboneError, *_all_subclasses(HboneError)]))


def test_the_tree_is_covered() -> None:
    names = {c.__name__ for c in ALL_ERRORS}
    for expected in ("RouteDenied", "DialFailed", "DialTimeout", "ProxyAuthRequired", "Overloaded", "Denied"):
        assert expected in names


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_hbone_error_keeps_its_own_codes(cls: type[HboneError]) -> None:
    exc = _instance(cls)
    answer = answer_for(exc)
    assert answer.status == exc.http_status and answer.h2_code == exc.h2_code
    assert answer.reason == (str(exc) or cls.__name__) and "\n" not in answer.reason
    # An HTTP/1 proxy never answers 401 (that asks for WWW-Authenticate) nor a 5xx but 502/504 (and 505 for HTTP/2).
    assert answer.proxy_status != 401
    assert answer.proxy_status < 500 or answer.proxy_status in (502, 504) or isinstance(exc, errors.BadRequest)
    assert answer.socks is not ReplyCode.SUCCEEDED


@pytest.mark.parametrize(
    ("exc", "status", "code", "proxy", "socks"),
    [
        (errors.Denied("denied: no policy"), 401, H2ErrorCode.REFUSED_STREAM, 403, ReplyCode.NOT_ALLOWED),
        (hbone.proxy.routing.RouteDenied("x"), 403, H2ErrorCode.REFUSED_STREAM, 403, ReplyCode.NOT_ALLOWED),
        (hbone.proxy.httpproxy.ProxyAuthRequired("x"), 407, H2ErrorCode.REFUSED_STREAM, 407, ReplyCode.NOT_ALLOWED),
        (errors.ConnectRefused(401), 401, H2ErrorCode.CONNECT_ERROR, 403, ReplyCode.NOT_ALLOWED),
        (errors.ConnectRefused(503), 503, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE),
        (errors.UpstreamUnreachable("x"), 503, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE),
        (errors.Overloaded("x"), 503, H2ErrorCode.REFUSED_STREAM, 502, ReplyCode.HOST_UNREACHABLE),
        (errors.LimitExceeded("x"), 431, H2ErrorCode.ENHANCE_YOUR_CALM, 431, ReplyCode.GENERAL_FAILURE),
        (errors.BadRequest("x"), 400, H2ErrorCode.PROTOCOL_ERROR, 400, ReplyCode.GENERAL_FAILURE),
        (errors.PeerIdentityError("x"), 401, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.NOT_ALLOWED),
        (hbone.proxy.frontend.DialTimeout("x"), 504, H2ErrorCode.CONNECT_ERROR, 504, ReplyCode.TTL_EXPIRED),
    ],
)
def test_our_errors_per_protocol(
    exc: BaseException, status: int, code: H2ErrorCode, proxy: int, socks: ReplyCode
) -> None:
    answer = answer_for(exc)
    assert (answer.status, answer.h2_code, answer.reason, answer.proxy_status, answer.socks) == (
        status,
        code,
        str(exc),
        proxy,
        socks,
    )


def _dial_failed(cause: OSError) -> BaseException:
    try:
        raise hbone.proxy.frontend.DialFailed("connect to h:1 failed", cause) from cause
    except hbone.proxy.frontend.DialFailed as e:
        return e


def test_a_dial_failure_keeps_the_os_meaning_for_socks() -> None:
    refused = _dial_failed(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert socks_reply_for(refused) is ReplyCode.CONNECTION_REFUSED
    assert socks_reply_for(_dial_failed(OSError(errno.ENETUNREACH, "x"))) is ReplyCode.NETWORK_UNREACHABLE
    assert socks_reply_for(_dial_failed(OSError(errno.EHOSTUNREACH, "x"))) is ReplyCode.HOST_UNREACHABLE
    assert answer_for(refused).status == 503 and proxy_status_for(refused) == 502


def _cert_error() -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed")
    e.verify_message = "self-signed certificate"
    return e


@pytest.mark.parametrize(
    ("exc", "status", "code", "proxy", "socks", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), 503, H2ErrorCode.CONNECT_ERROR, 502,
         ReplyCode.CONNECTION_REFUSED, "Connection refused"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), 502, H2ErrorCode.CONNECT_ERROR, 502,
         ReplyCode.HOST_UNREACHABLE, "Connection reset by peer"),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), 502, H2ErrorCode.CONNECT_ERROR, 502,
         ReplyCode.HOST_UNREACHABLE, "Broken pipe"),
        (ConnectionAbortedError(), 502, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE,
         "ConnectionAbortedError"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), 503, H2ErrorCode.CONNECT_ERROR, 502,
         ReplyCode.NETWORK_UNREACHABLE, "Network is unreachable"),
        (OSError(errno.EHOSTUNREACH, None), 503, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE,
         "No route to host"),
        (OSError("no original destination"), 503, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE,
         "no original destination"),
        (asyncio.IncompleteReadError(b"ab", 5), 502, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.GENERAL_FAILURE,
         "2 bytes read on a total of 5 expected bytes"),
        (TimeoutError(), 504, H2ErrorCode.CANCEL, 504, ReplyCode.TTL_EXPIRED, "timed out"),
        (TimeoutError("dial"), 504, H2ErrorCode.CANCEL, 504, ReplyCode.TTL_EXPIRED, "dial"),
        (ssl.SSLError(1, "[SSL] wrong version number"), 502, H2ErrorCode.CONNECT_ERROR, 502,
         ReplyCode.HOST_UNREACHABLE, "TLS failed: [SSL] wrong version number"),
        (_cert_error(), 502, H2ErrorCode.CONNECT_ERROR, 502, ReplyCode.HOST_UNREACHABLE,
         "TLS certificate verify failed: self-signed certificate"),
        (asyncio.CancelledError(), CLIENT_CLOSED, H2ErrorCode.CANCEL, CLIENT_CLOSED, ReplyCode.GENERAL_FAILURE,
         "cancelled"),
        (RuntimeError("bug"), 500, H2ErrorCode.INTERNAL_ERROR, 502, ReplyCode.GENERAL_FAILURE, "bug"),
        (ValueError(), 500, H2ErrorCode.INTERNAL_ERROR, 502, ReplyCode.GENERAL_FAILURE, "ValueError"),
    ],
)  # fmt: skip
def test_foreign_errors(
    exc: BaseException, status: int, code: H2ErrorCode, proxy: int, socks: ReplyCode, reason: str
) -> None:
    answer = answer_for(exc)
    assert (answer.status, answer.h2_code, answer.reason, answer.proxy_status, answer.socks) == (
        status,
        code,
        reason,
        proxy,
        socks,
    )


@pytest.mark.parametrize(
    ("exc", "gateway"),
    [
        (hbone.proxy.routing.NoRoute("no ingress route for host 'x'"), 404),
        (errors.BadRequest("x"), 400),
        (errors.LimitExceeded("x"), 431),
        (hbone.proxy.routing.RouteDenied("x"), 502),  # the gateway's own config; not the client's to fix
        (errors.ConnectRefused(401), 502),
        (errors.UpstreamUnreachable("x"), 502),
        (ConnectionRefusedError(), 502),
        (hbone.proxy.frontend.DialTimeout("x"), 504),
        (TimeoutError(), 504),
        (asyncio.CancelledError(), CLIENT_CLOSED),
        (RuntimeError(), 502),
    ],
)
def test_gateway_statuses(exc: BaseException, gateway: int) -> None:
    assert answer_for(exc).gateway_status == gateway


def test_reasons_are_one_bounded_line() -> None:
    answer = answer_for(errors.BadRequest("line one\r\nline two\t" + "x" * 2000))
    assert answer.reason.startswith("line one line two x") and "\n" not in answer.reason
    assert len(answer.reason) == MAX_REASON and answer.reason.endswith("...")
