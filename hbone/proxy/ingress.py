"""Ingress gateway listeners: raw TCP, TLS passthrough by SNI, TLS termination by SNI, HTTP by Host/:authority.

Each accepted connection is mapped to a mesh target (`hosts: {name: svc:port}`, exact names or `*.suffix`) and
opened through the front ends' `Opener`, i.e. over HBONE with the gateway's own identity, so the destination's
authorization policies judge the gateway; route-table deny rules apply here first.

HTTP routing is per connection: the first request's `Host` (HTTP/1.1) or `:authority` (h2 prior knowledge,
decoded with the sans-IO `h2` library without answering it) picks the backend, and the connection's bytes are
then relayed untouched, so keep-alive and h2 multiplexing work end to end. A client that sends requests for a
second host on the same connection reaches the first host's backend (browsers do not do this without
certificate coalescing, which this gateway never advertises).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from hbone.errors import BadRequest, ConfigError, HboneError, ProtocolError
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, fmt_addr, relay
from hbone.proxy.routing import host_matches
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.clienthello import ClientHello, ClientHelloReader

log = logging.getLogger("hbone.ingress")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024


def lookup(hosts: Mapping[str, Authority], name: str | None) -> Authority:
    """Exact name first, then the longest matching `*.suffix` pattern, then `*`."""
    if name is None:
        raise BadRequest("no host name to route by")
    name = name.lower().rstrip(".")
    if name in hosts:
        return hosts[name]
    for pattern in sorted(hosts, key=len, reverse=True):
        if host_matches(pattern, name):
            return hosts[pattern]
    raise BadRequest(f"no ingress route for host {name!r}")


def parse_hosts(raw: Mapping[str, str]) -> dict[str, Authority]:
    return {k.lower(): parse_authority(v) for k, v in raw.items()}


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def http1_host(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            return _strip_port(value.strip().decode("latin-1"))
    return None


def h2_authority(data: bytes) -> str | bool | None:
    """The first request's :authority (or Host) from h2 bytes; False when more bytes are needed."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError as e:
        raise BadRequest(f"invalid HTTP/2: {e}") from e
    for event in events:
        if isinstance(event, h2.events.RequestReceived):
            headers = {bytes(k): bytes(v) for k, v in event.headers or ()}
            value = headers.get(b":authority") or headers.get(b"host")
            return _strip_port(value.decode("latin-1")) if value else None
    return False


class Ingress:
    """One ingress listener; `handle_*` are the per-type connection handlers."""

    def __init__(self, opener: Opener, *, hosts: Mapping[str, Authority] | None = None, timeout: float = 10.0):
        self.opener = opener
        self.hosts = dict(hosts or {})
        self.timeout = timeout
        self._sni: dict[int, str | None] = {}

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kind: str,
        route: Callable[[], Authority],
        first: bytes = b"",
    ) -> None:
        peer = writer.get_extra_info("peername")
        record = AccessRecord(f"ingress-{kind}", mode="INGRESS", src_addr=fmt_addr(peer))
        try:
            target = route()
            src = (str(peer[0]), int(peer[1])) if peer else None
            upstream = await self.opener.open(target, src=src, record=record)
        except (HboneError, OSError) as e:
            with contextlib.suppress(ConnectionError, OSError):
                if kind == "http" and not first.startswith(H2_PREFACE):
                    status = 404 if isinstance(e, BadRequest) else 502
                    body = f"{e}\n".encode()
                    writer.write(
                        f"HTTP/1.1 {status} Error\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                        "connection: close\r\n\r\n".encode()
                        + body
                    )
            writer.close()
            record.finish(getattr(e, "http_status", 502), str(e))
            return
        await relay(reader, writer, upstream, record, first)

    async def handle_tcp(self, target: Authority, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._forward(reader, writer, "tcp", lambda: target)

    async def handle_tls_passthrough(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = ClientHelloReader()
        parsed: ClientHello | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while parsed is None:
                    data = await reader.read(4096)
                    if not data:
                        raise EOFError("closed before the ClientHello was complete")
                    parsed = hello.feed(data)
        except (ProtocolError, TimeoutError, EOFError, ConnectionError) as e:
            log.info("ingress: refused connection without a usable ClientHello: %s", e)
            writer.close()
            return
        sni = parsed.server_name
        await self._forward(reader, writer, "tls", lambda: lookup(self.hosts, sni), hello.data)

    async def handle_tls_terminated(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = self._sni.pop(id(writer.get_extra_info("ssl_object")), None)
        await self._forward(reader, writer, "tls-terminate", lambda: lookup(self.hosts, name))

    async def handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        host: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    data = await reader.read(16384)
                    if not data:
                        raise EOFError("closed before a complete request head")
                    buf += data
                    if len(buf) > MAX_HEAD:
                        raise BadRequest(f"no routable request in the first {MAX_HEAD} bytes")
                    if buf.startswith(H2_PREFACE[: len(buf)]) and len(buf) < len(H2_PREFACE):
                        continue
                    if buf.startswith(H2_PREFACE):
                        found = h2_authority(buf)
                        if found is not False:
                            host = found if isinstance(found, str) else None
                            break
                    elif b"\r\n\r\n" in buf:
                        host = http1_host(buf)
                        break
        except (BadRequest, TimeoutError, EOFError, ConnectionError) as e:
            log.info("ingress: no routable HTTP request: %s", e)
            writer.close()
            return
        await self._forward(reader, writer, "http", lambda: lookup(self.hosts, host), buf)

    # --- listeners -------------------------------------------------------------------------------------------

    async def start_tcp(self, host: str, port: int, target: Authority) -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: self.handle_tcp(target, r, w), host, port, reuse_address=True)

    async def start_tls_passthrough(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle_tls_passthrough, host, port, reuse_address=True)

    async def start_http(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle_http, host, port, reuse_address=True)

    async def start_tls_terminate(self, host: str, port: int, certs: Mapping[str, Path]) -> asyncio.Server:
        contexts = {name.lower(): server_tls_context(path) for name, path in certs.items()}
        default = next(iter(contexts.values()))

        def pick(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self._sni[id(obj)] = name
            chosen = contexts.get((name or "").lower())
            if chosen is None and name:
                chosen = next((c for p, c in contexts.items() if host_matches(p, name.lower())), None)
            obj.context = chosen or default

        front = server_tls_context(next(iter(certs.values())))
        front.sni_callback = pick
        return await asyncio.start_server(self.handle_tls_terminated, host, port, ssl=front, reuse_address=True)


def server_tls_context(path: Path) -> ssl.SSLContext:
    """A TLS server context from a directory: `tls.crt` + `tls.key` (Kubernetes) or `cert-chain.pem` + `key.pem`."""
    for cert, key in (("tls.crt", "tls.key"), ("cert-chain.pem", "key.pem")):
        if (path / cert).exists() and (path / key).exists():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(path / cert, path / key)
            return ctx
    raise ConfigError(f"{path}: expected tls.crt + tls.key or cert-chain.pem + key.pem")
