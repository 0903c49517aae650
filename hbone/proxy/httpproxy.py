"""HTTP/1.1 proxy front end, default 127.0.0.1:15081: CONNECT tunnels (RFC 9110 §9.3.6) and forwarded requests.

`curl -p -x http://127.0.0.1:15081 URL` and every `HTTPS_PROXY`-aware client speak CONNECT; `http_proxy=` users
(curl, pip, apt, urllib) send absolute-form requests (`GET http://host/path`, RFC 9112 §3.2.2), which are forwarded
per request through the mesh by the HTTP/1.1 ingress engine (`H1Ingress` with the target taken from the URI, the
`Host` replaced, hop-by-hop headers dropped, keep-alive kept). A CONNECT head is parsed by the sans-IO
`HttpConnectParser`, anything else by `hbone.wire.http1`; the destination is routed like SOCKS5. Failures answer
with a status and a one-line text body that says why: 407 (credentials), 403 (route or policy), 502 (upstream
refused or unreachable), 504 (upstream timed out), 4xx for malformed requests. 200 goes out only once the upstream
is open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping

from hbone.errors import BadRequest, ClientClosed, Denied
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard, client_phase
from hbone.proxy.ingress_h1 import H1Ingress
from hbone.proxy.listener import start_listener
from hbone.proxy.responders import Http1Responder
from hbone.wire.authority import Authority
from hbone.wire.http1 import Request, absolute_form
from hbone.wire.httpconnect import (
    DEFAULT_MAX_HEADER_BYTES,
    HttpConnectParser,
    HttpConnectRequest,
    basic_credentials,
    connection_established,
)

log = logging.getLogger("hbone.httpproxy")

DEFAULT_LISTEN = ("127.0.0.1", 15081)


class ProxyAuthRequired(Denied):
    """Missing or wrong Proxy-Authorization (answer 407 with a Basic challenge)."""

    http_status = 407


class HttpConnectProxy:
    """Serves CONNECT requests; `users` enables `Proxy-Authorization: Basic` checking."""

    def __init__(
        self,
        dialer: Opener,
        *,
        users: Mapping[str, str] | None = None,
        realm: str = "hbone",
        handshake_timeout: float = 10.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.dialer = dialer
        self.request_timeout = request_timeout  # forwarded requests: upstream open + response head
        self.users = dict(users or {})
        self.realm = realm
        self.handshake_timeout = handshake_timeout
        self.total = 0

    async def start(self, host: str = DEFAULT_LISTEN[0], port: int = DEFAULT_LISTEN[1]) -> asyncio.Server:
        return await start_listener(self.handle, host, port)

    def _check_auth(self, request: HttpConnectRequest) -> None:
        self._check_basic(request.proxy_authorization)

    def _check_basic(self, value: str | None) -> None:
        if not self.users:
            return
        creds = basic_credentials(value) if value else None
        if creds is None:
            raise ProxyAuthRequired("proxy authentication required (Basic)")
        want = self.users.get(creds.username)
        if want is None or not hmac.compare_digest(want.encode(), creds.password.encode("utf-8", "surrogateescape")):
            raise ProxyAuthRequired(f"wrong user name or password for {creds.username!r}")

    def _resolve(self, req: Request) -> tuple[Authority, Request]:
        """An absolute-form request: credentials first (per request: keep-alive must not skip them), then the URI."""
        self._check_basic(req.get("proxy-authorization"))
        return absolute_form(req)

    async def _first_line(self, reader: asyncio.StreamReader) -> bytes:
        """Enough bytes to see the method: `CONNECT ` or not (bounded like a CONNECT head). The head itself is
        parsed once, by the parser these bytes are handed to."""
        buf = bytearray()
        async with asyncio.timeout(self.handshake_timeout):
            while len(buf.lstrip(b"\r\n")) < len(b"CONNECT ") and len(buf) <= DEFAULT_MAX_HEADER_BYTES:
                data = await reader.read(8192)
                if not data:
                    break
                buf += data
        return bytes(buf)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.total += 1
        peer = writer.get_extra_info("peername")
        try:
            first = await self._first_line(reader)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
            return
        if first and not first.lstrip(b"\r\n").startswith(b"CONNECT "):
            forward = H1Ingress(
                self.dialer, _no_route, resolve=self._resolve, realm=self.realm, kind="http-proxy",
                request_timeout=self.request_timeout,
            )  # fmt: skip
            await forward.serve(reader, writer, first)
            return
        record = AccessRecord("http-connect", mode="HTTP-CONNECT", src_addr=fmt_addr(peer))
        responder = Http1Responder(writer, realm=self.realm)
        with TunnelGuard(record, responder) as guard:  # failures: status line + text (403, 407, 502, 504, 4xx)
            parser = HttpConnectParser()
            request = parser.feed(first) if first else None
            if request is None:
                request = await self._read_request(parser, reader, bool(first))
            target = str(request.target)  # failures name the target in the body; the record has it as dst_addr
            responder.describe = lambda reason: reason if target in reason else f"{target}: {reason}"
            src = (str(peer[0]), int(peer[1])) if peer else None
            self._check_auth(request)
            upstream = await self.dialer.open(request.target, src=src, record=record)
            writer.write(connection_established())
            await relay(reader, writer, upstream, guard, parser.take_leftover())

    async def _read_request(
        self, parser: HttpConnectParser, reader: asyncio.StreamReader, began: bool
    ) -> HttpConnectRequest:
        async with client_phase("request head", self.handshake_timeout):
            while began:
                data = await reader.read(8192)
                if not data:
                    break
                request = parser.feed(data)
                if request is not None:
                    return request
        raise ClientClosed("client closed before a complete request")


def _no_route(host: str | None) -> Authority:
    raise BadRequest("a forward proxy routes by the request URI")  # never called: `resolve` is set
