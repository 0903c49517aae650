"""What goes on the wire for an error: the one table from an exception to every protocol's answer.

A tunnel that fails is answered in the protocol of whoever asked for it: an HBONE server answers a status (before
it said 200) or resets the stream with an HTTP/2 error code (after); an HTTP/1 proxy or ingress answers a status
line; a SOCKS5 front end a reply code. `answer_for` decides all of them at once from the exception, so each edge
only says *how* to put the answer on its wire (`hbone.proxy.guard`), never *which* answer.

Our own errors (`hbone.errors`) carry their codes. Foreign ones are classified here and nowhere else (ztunnel
maps errors to a status in one function, too):

| exception | status | RST_STREAM | HTTP/1 proxy | SOCKS5 |
|---|---|---|---|---|
| `HboneError` | its `http_status` | its `h2_code` | 403 policy, 4xx kept, 504 timeout, else 502 | by kind |
| `ssl.SSLError` (TLS to the upstream) | 502 | CONNECT_ERROR | 502 | host unreachable |
| `ConnectionRefusedError` | 503 | CONNECT_ERROR | 502 | connection refused |
| `ConnectionResetError`, broken pipe, `EOFError` | 502 | CONNECT_ERROR | 502 | host unreachable |
| other `OSError` | 503 | CONNECT_ERROR | 502 | network/host unreachable |
| `TimeoutError` | 504 | CANCEL | 504 | TTL expired |
| `CancelledError` (any non-`Exception`) | 499 | CANCEL | 499 | general failure |
| anything else (a bug) | 500 | INTERNAL_ERROR | 502 | general failure |

An HTTP ingress (`gateway_status`) keeps the client's own 4xx (a malformed request, no route: 404), answers 504 for
a timeout and 502 for everything else: its client cannot act on the mesh's reasons.

RFC 9113 §8.5: a TCP reset or abnormal close on the far side of a CONNECT tunnel resets the stream with
CONNECT_ERROR. 499 is the de-facto "client closed the request" status (nginx); it is only ever logged, since
nobody is left to read it.
"""

from __future__ import annotations

import errno
import os
import ssl
from dataclasses import dataclass

from hbone.errors import (
    BadRequest,
    ConnectRefused,
    Denied,
    H2ErrorCode,
    HboneError,
    LimitExceeded,
    PeerIdentityError,
    TunnelError,
    UpstreamUnreachable,
)
from hbone.wire.socks5 import ReplyCode

#: Longest reason text put on the wire or into a record (a peer-influenced message must stay one short line).
MAX_REASON = 512

#: Status logged for a tunnel whose client went away (or whose task was cancelled) before it was answered.
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class Answer:
    """Every protocol's answer to one failure."""

    status: int  # what an HBONE / HTTP/2 server answers (and what an access record logs)
    h2_code: H2ErrorCode  # the RST_STREAM code once a status already went out (or instead of one)
    reason: str  # one line of text: response body, log, access record
    proxy_status: int  # what an HTTP/1 CONNECT / forward proxy answers
    socks: ReplyCode  # what a SOCKS5 front end replies
    gateway_status: int  # what an HTTP ingress answers for a request it could not forward


def reason_of(exc: BaseException) -> str:
    """The one-line text of an error: its message (or its type), foreign errors worded for users."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate verify failed: {getattr(exc, 'verify_message', None) or exc.strerror or exc}"
    elif isinstance(exc, ssl.SSLError):  # `reason` is the short OpenSSL name; absent on hand-made ones
        text = f"TLS failed: {getattr(exc, 'reason', None) or exc.strerror or exc}"
    elif isinstance(exc, OSError) and not isinstance(exc, HboneError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, OSError) and not isinstance(exc, HboneError) and exc.errno:
        text = os.strerror(exc.errno)
    elif isinstance(exc, TimeoutError) and not str(exc):
        text = "timed out"
    elif not isinstance(exc, Exception):
        text = str(exc) or "cancelled"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    return text[: MAX_REASON - 3] + "..." if len(text) > MAX_REASON else text


def answer_for(exc: BaseException) -> Answer:
    """The answer for `exc` in every protocol (see the module table)."""
    status, code = _status_and_code(exc)
    return Answer(status, code, reason_of(exc), proxy_status_for(exc), socks_reply_for(exc), gateway_status_for(exc))


def _status_and_code(exc: BaseException) -> tuple[int, H2ErrorCode]:
    if isinstance(exc, HboneError):
        return exc.http_status, exc.h2_code
    if not isinstance(exc, Exception):
        return CLIENT_CLOSED, H2ErrorCode.CANCEL
    if isinstance(exc, TimeoutError):
        return 504, H2ErrorCode.CANCEL
    if isinstance(exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError | EOFError):
        return 502, H2ErrorCode.CONNECT_ERROR
    if isinstance(exc, OSError):
        return 503, H2ErrorCode.CONNECT_ERROR
    return 500, H2ErrorCode.INTERNAL_ERROR


def proxy_status_for(exc: BaseException) -> int:
    """The status an HTTP/1 proxy or ingress answers: a refusal by policy (ours, or the HBONE server's 401/403) is
    403, a malformed request keeps its 4xx, a timeout is 504, anything upstream is 502 (RFC 9110 §15.6.3)."""
    if isinstance(exc, ConnectRefused):
        return 403 if exc.status in (401, 403) else 502
    if isinstance(exc, Denied):
        return 403 if exc.http_status == 401 else exc.http_status  # 401 is HBONE's "denied"; 407 stays 407
    if isinstance(exc, BadRequest | LimitExceeded):
        return exc.http_status
    if isinstance(exc, TimeoutError):
        return 504
    if not isinstance(exc, Exception):
        return CLIENT_CLOSED
    if isinstance(exc, TunnelError | OSError):
        return 502
    if isinstance(exc, HboneError) and 400 <= exc.http_status < 500:
        return exc.http_status
    return 502


def gateway_status_for(exc: BaseException) -> int:
    """The status an HTTP ingress answers: the client's own mistakes keep their 4xx (404 no route), a timeout is
    504, anything that went wrong on the way to the backend is 502 — the client cannot act on the mesh's reasons."""
    if isinstance(exc, BadRequest | LimitExceeded | TimeoutError) or not isinstance(exc, Exception):
        return proxy_status_for(exc)  # the same 4xx, 504 or 499 as a proxy's
    return 502


def socks_reply_for(exc: BaseException) -> ReplyCode:
    """RFC 1928 §6 REP that best says why the connect failed: a policy refusal (ours, or the HBONE server's
    401/403) is 'not allowed'; an OS error behind a dial keeps its meaning (refused, unreachable, timed out)."""
    if isinstance(exc, ConnectRefused) and exc.status in (401, 403):
        return ReplyCode.NOT_ALLOWED
    if isinstance(exc, Denied | PeerIdentityError):
        return ReplyCode.NOT_ALLOWED
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(exc, HboneError) and isinstance(cause, OSError) and not isinstance(exc, TimeoutError):
        exc = cause
    if isinstance(exc, ConnectionRefusedError):
        return ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, TimeoutError):
        return ReplyCode.TTL_EXPIRED
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return ReplyCode.NETWORK_UNREACHABLE
    if isinstance(exc, OSError | UpstreamUnreachable) or getattr(exc, "http_status", None) == 503:
        return ReplyCode.HOST_UNREACHABLE
    return ReplyCode.GENERAL_FAILURE
