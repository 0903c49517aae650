"""Ingress gateway listeners: raw TCP, TLS passthrough by SNI, TLS termination by SNI, HTTP by Host/:authority.

Each accepted connection is mapped to a mesh target (`hosts: {name: svc:port}`, exact names or `*.suffix`) and
opened through the front ends' `Opener`, i.e. over HBONE with the gateway's own identity, so the destination's
authorization policies judge the gateway; route-table deny rules apply here first.

HTTP (`ingress-http`, and `ingress-tls-terminate` with `http: true`, ALPN h2 + http/1.1) is routed per request:
HTTP/1.1 requests by `Host` (`ingress_h1`), HTTP/2 streams by `:authority` (`ingress_h2`, h2c prior knowledge or
ALPN h2). The backend is spoken to in the client's protocol (Envoy's USE_DOWNSTREAM_PROTOCOL): h2 backends
must accept h2c prior knowledge.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from hbone.errors import ClientClosed, ConfigError, HboneError
from hbone.net.relay import TcpEnd
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard, client_phase
from hbone.proxy.ingress_h1 import H1Ingress
from hbone.proxy.ingress_h2 import H2Backends, H2Ingress
from hbone.proxy.listener import start_listener
from hbone.proxy.responders import TcpResponder
from hbone.proxy.routing import NoRoute, host_matches
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.clienthello import ClientHello, ClientHelloReader

log = logging.getLogger("hbone.ingress")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024


def lookup(hosts: Mapping[str, Authority], name: str | None) -> Authority:
    """Exact name first, then the longest matching `*.suffix` pattern, then `*`."""
    if name is None:
        raise NoRoute("no host name to route by")
    name = name.lower().rstrip(".")
    if name in hosts:
        return hosts[name]
    for pattern in sorted(hosts, key=len, reverse=True):
        if host_matches(pattern, name):
            return hosts[pattern]
    raise NoRoute(f"no ingress route for host {name!r}")


def parse_hosts(raw: Mapping[str, str]) -> dict[str, Authority]:
    return {k.lower(): parse_authority(v) for k, v in raw.items()}


class Ingress:
    """One ingress listener; `handle_*` are the per-type connection handlers."""

    def __init__(
        self,
        opener: Opener,
        *,
        hosts: Mapping[str, Authority] | None = None,
        timeout: float = 10.0,
        request_timeout: float = 15.0,
    ):
        self.opener = opener
        self.hosts = dict(hosts or {})
        self.timeout = timeout
        # SNI per live TLS object, forgotten with it: a handshake that fails after the callback left an entry
        # behind for good, and the HTTP path never removed its entries.
        self._sni: weakref.WeakKeyDictionary[ssl.SSLObject, str | None] = weakref.WeakKeyDictionary()
        self.backends = H2Backends(opener)  # shared by every client connection of this listener
        self.request_timeout = request_timeout

    def route(self, host: str | None) -> Authority:
        return lookup(self.hosts, host)

    async def close(self) -> None:
        """Close the pooled backend connections (the listener itself is closed by its owner)."""
        await self.backends.close()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kind: str,
        target: Callable[[], Awaitable[tuple[Authority, bytes]]],
    ) -> None:
        """One connection, one record: `target()` says where it goes and which bytes it already read."""
        peer = writer.get_extra_info("peername")
        record = AccessRecord(f"ingress-{kind}", mode="INGRESS", src_addr=fmt_addr(peer))
        with TunnelGuard(record, TcpResponder(writer)) as guard:  # failures: a close (no protocol to say why in)
            authority, first = await target()
            src = (str(peer[0]), int(peer[1])) if peer else None
            upstream = await self.opener.open(authority, src=src, record=record)
            await relay(reader, writer, upstream, guard, first)

    async def handle_tcp(self, target: Authority, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def fixed() -> tuple[Authority, bytes]:
            return target, b""

        await self._forward(reader, writer, "tcp", fixed)

    async def handle_tls_passthrough(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def by_sni() -> tuple[Authority, bytes]:
            """The ClientHello's SNI; a connection without a usable one is refused (and recorded: 400/408/499)."""
            hello = ClientHelloReader()
            parsed: ClientHello | None = None
            async with client_phase("ClientHello", self.timeout):
                while parsed is None:
                    data = await reader.read(4096)
                    if not data:
                        raise ClientClosed("client closed before the ClientHello was complete")
                    parsed = hello.feed(data)
            return lookup(self.hosts, parsed.server_name), hello.data

        await self._forward(reader, writer, "tls", by_sni)

    async def handle_tls_terminated(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        name = self._sni.pop(obj, None) if obj is not None else None

        async def by_name() -> tuple[Authority, bytes]:
            return lookup(self.hosts, name), b""

        await self._forward(reader, writer, "tls-terminate", by_name)

    async def handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Sniff h2 prior knowledge (or read ALPN), then route each request of the connection."""
        ssl_object = writer.get_extra_info("ssl_object")
        scheme = "https" if ssl_object is not None else "http"
        buf = b""
        try:
            if ssl_object is not None:
                h2 = ssl_object.selected_alpn_protocol() == "h2"
            else:
                async with asyncio.timeout(self.timeout):
                    while len(buf) < len(H2_PREFACE) and H2_PREFACE.startswith(buf):
                        data = await reader.read(len(H2_PREFACE) - len(buf))
                        if not data:
                            break
                        buf += data
                h2 = buf == H2_PREFACE
            if h2:
                peer = writer.get_extra_info("peername")
                src = (str(peer[0]), int(peer[1])) if peer else None
                front = H2Ingress(self.backends, self.route, request_timeout=self.request_timeout, scheme=scheme)
                await front.serve(TcpEnd(reader, writer, buf), src)
            else:
                h1 = H1Ingress(self.opener, self.route, request_timeout=self.request_timeout, scheme=scheme)
                await h1.serve(reader, writer, buf)
        except (TimeoutError, ConnectionError, HboneError) as e:
            log.info("ingress: HTTP connection ended: %r", e)
        finally:
            writer.close()

    # --- listeners -------------------------------------------------------------------------------------------

    async def start_tcp(self, host: str, port: int, target: Authority) -> asyncio.Server:
        return await start_listener(lambda r, w: self.handle_tcp(target, r, w), host, port)

    async def start_tls_passthrough(self, host: str, port: int) -> asyncio.Server:
        return await start_listener(self.handle_tls_passthrough, host, port)

    async def start_http(self, host: str, port: int) -> asyncio.Server:
        return await start_listener(self.handle_http, host, port)

    async def start_tls_terminate(
        self, host: str, port: int, certs: Mapping[str, Path], *, http: bool = False
    ) -> asyncio.Server:
        """TLS termination routed by SNI; with `http` the requests inside are routed one by one (ALPN h2/1.1)."""
        alpn = ["h2", "http/1.1"] if http else []
        contexts = {name.lower(): server_tls_context(path, alpn) for name, path in certs.items()}
        default = next(iter(contexts.values()))

        def pick(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self._sni[obj] = name
            chosen = contexts.get((name or "").lower())
            if chosen is None and name:
                chosen = next((c for p, c in contexts.items() if host_matches(p, name.lower())), None)
            obj.context = chosen or default

        front = server_tls_context(next(iter(certs.values())), alpn)
        front.sni_callback = pick
        handler = self.handle_http if http else self.handle_tls_terminated
        return await start_listener(handler, host, port, ssl=front)


def server_tls_context(path: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS server context from a directory: `tls.crt` + `tls.key` (Kubernetes) or `cert-chain.pem` + `key.pem`."""
    for cert, key in (("tls.crt", "tls.key"), ("cert-chain.pem", "key.pem")):
        if (path / cert).exists() and (path / key).exists():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(path / cert, path / key)
            if alpn:
                ctx.set_alpn_protocols(alpn)
            return ctx
    raise ConfigError(f"{path}: expected tls.crt + tls.key or cert-chain.pem + key.pem")
