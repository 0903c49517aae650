"""Ingress HTTP/1.1, routed per request: each request on a keep-alive connection picks its backend by `Host`.

Requests are parsed with the sans-IO `hbone.wire.http1` reader and forwarded as HTTP/1.1 over an HBONE tunnel
per backend, kept for the client connection's life (reopened when the backend closes it). Bodies keep their
framing (Content-Length as is, chunked re-chunked with its trailers); a close-delimited response is re-framed as
chunked for HTTP/1.1 clients so the client connection survives. Hop-by-hop headers are dropped (RFC 9110
§7.6.1); `Upgrade` (WebSocket) is passed through and a 101 turns the connection into a byte relay. Pipelined
requests are answered in order, one at a time. No route: 404 (the connection stays usable); upstream failure:
502; no response head in time: 504. Each request is one access-log record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hbone.errors import HboneError, ProtocolError, TunnelError
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, Upstream, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.ingress_h2 import Lookup, strip_port
from hbone.proxy.responders import Http1Responder
from hbone.proxy.routing import NoRoute
from hbone.wire.answers import reason_of
from hbone.wire.authority import Authority
from hbone.wire.http1 import (
    Data,
    EndOfMessage,
    Event,
    Framing,
    Http1Error,
    MessageReader,
    Request,
    Response,
    encode_chunk,
    encode_last_chunk,
    encode_request,
    encode_response,
    end_to_end,
    keep_alive,
)
from hbone.wire.httpconnect import error_response

log = logging.getLogger("hbone.ingress")

#: A request → (the target to open, the request to send there); raises an HboneError to refuse it.
Resolve = Callable[[Request], tuple[Authority, Request]]


class EventSource:
    """The events of one side of an HTTP/1.1 connection, reading more bytes when the parser needs them."""

    def __init__(self, read: Callable[[int], Awaitable[bytes]], parser: MessageReader, first: bytes = b"") -> None:
        self.read = read
        self.parser = parser
        self.pending: deque[Event] = deque(parser.feed(first) if first else ())

    async def next(self) -> Event | None:
        """The next event of the current message; None at the end of it or at a clean EOF between messages."""
        while not self.pending:
            if self.parser.done:
                return None
            data = await self.read(64 * 1024)
            events = self.parser.feed(data) if data else self.parser.eof()
            if not data and not events:
                return None
            self.pending.extend(events)
        return self.pending.popleft()

    def restart(self, request_method: str = "GET") -> None:
        self.parser.next_message(request_method)
        self.pending.extend(self.parser.feed(b""))


@dataclass
class _Backend:
    upstream: Upstream
    responses: EventSource


@dataclass
class _Session:
    """One client connection: its request events, its writer and the backend connections it opened."""

    client: EventSource
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    src: tuple[str, int] | None
    backends: dict[Authority, _Backend]


def _stale(pipe: Any) -> bool:
    """A kept backend connection the backend has closed meanwhile (its EOF or error already arrived)."""
    at_eof = getattr(pipe, "at_eof", False)
    return bool(at_eof() if callable(at_eof) else at_eof) or getattr(pipe, "error", None) is not None


class H1Ingress:
    """Serves one client connection (`serve`), routing each request by its `Host`."""

    def __init__(
        self, opener: Opener, route: Lookup, *, request_timeout: float = 15.0, idle_timeout: float = 300.0,
        scheme: str = "http", resolve: Resolve | None = None, realm: str = "hbone", kind: str = "ingress-http",
    ) -> None:  # fmt: skip
        self.opener = opener
        self.route = route
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.scheme = scheme
        # A forward proxy (`hbone http-proxy`) takes the target from the request itself (absolute-form) instead of
        # routing by Host; every error it answers (407 with a challenge in `realm`, 403, 400) closes the connection.
        self.resolve = resolve
        self.realm = realm
        self.kind = kind

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b"") -> None:
        peer = writer.get_extra_info("peername")
        src = (str(peer[0]), int(peer[1])) if peer else None
        client = EventSource(reader.read, MessageReader(), first)
        session = _Session(client, reader, writer, src, {})
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        event = await client.next()
                except Http1Error as e:
                    writer.write(error_response(e.http_status, reason_of(e)))
                    await writer.drain()
                    return
                if event is None:
                    return
                assert isinstance(event, Request)
                if not await self._exchange(session, event):
                    return
                client.restart()
        except (TimeoutError, ConnectionError, HboneError) as e:
            log.debug("ingress http/1.1 connection from %s ended: %r", peer, e)
        finally:
            for backend in session.backends.values():
                backend.upstream.close()
            writer.close()

    async def _exchange(self, session: _Session, req: Request) -> bool:
        """Forward one request and its response; True when the client connection can carry the next one."""
        client, writer, backends, src = session.client, session.writer, session.backends, session.src
        record = AccessRecord(self.kind, mode="HTTP/1.1", src_addr=fmt_addr(src))
        host = req.get("host")
        shown = req.target if self.resolve is not None else f"{host or '-'}{req.target}"  # absolute-form has the host
        record.request = f"{req.method} {shown}"
        keep = keep_alive(req)
        # Failures answer a status line (404 no route, 502 upstream, 504 timeout, 403/407 policy) and close.
        responder = Http1Responder(writer, realm=self.realm, gateway=self.resolve is None)
        with TunnelGuard(record, responder) as guard:
            try:
                if self.resolve is not None:
                    target, req = self.resolve(req)
                else:
                    target = self.route(strip_port(host) if host else None)
            except NoRoute as e:
                if self.resolve is not None:
                    raise
                while isinstance(await client.next(), Data):  # discard the body so the next request can follow
                    pass
                # the connection stays usable for the next request
                writer.write(error_response(e.http_status, reason_of(e), keep_alive=keep))
                guard.finish(e.http_status, reason_of(e))
                return keep
            record.dst_addr = str(target)
            if self.resolve is None:
                responder.describe = lambda reason: f"upstream {target}: {reason}"
            async with asyncio.timeout(self.request_timeout):
                backend = backends.get(target)
                if backend is None or _stale(backend.upstream.pipe):
                    if backend is not None:
                        backend.upstream.close()
                    backend = await self._open(target, src, record, backends)
            return await self._forward(session, req, backend, guard, target=target, keep=keep)
        return False

    async def _forward(
        self, session: _Session, req: Request, backend: _Backend, guard: TunnelGuard, *, target: Authority, keep: bool
    ) -> bool:
        """Send the request (its body from a task) and relay the response."""
        client, record, src = session.client, guard.record, session.src
        backend.responses.parser.request_method = req.method
        upgrade = req.get("upgrade") if "upgrade" in (req.get("connection") or "").lower() else None
        chunked = client.parser.framing is Framing.CHUNKED
        headers = end_to_end(req.headers)
        headers += [("transfer-encoding", "chunked")] if chunked else []
        headers += [("connection", "upgrade"), ("upgrade", upgrade)] if upgrade else []
        headers += [("x-forwarded-for", src[0])] if src else []
        headers.append(("x-forwarded-proto", self.scheme))
        pipe = backend.upstream.pipe
        sender = asyncio.ensure_future(self._send_body(client, pipe, encode_request(
            Request(req.method, req.target, "HTTP/1.1", tuple(headers))), chunked, record))  # fmt: skip
        try:
            return await self._respond(session, req, backend, guard, target=target, sender=sender, keep=keep)
        finally:
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, HboneError, OSError, Http1Error):
                await sender

    async def _open(
        self, target: Authority, src: tuple[str, int] | None, record: AccessRecord, backends: dict[Authority, _Backend]
    ) -> _Backend:
        upstream = await self.opener.open(target, src=src)
        record.dst_identity = str(upstream.peer_identity) if upstream.peer_identity else None
        backend = _Backend(upstream, EventSource(upstream.pipe.read, MessageReader(response=True)))
        backends[target] = backend
        return backend

    @staticmethod
    async def _send_body(client: EventSource, pipe: Any, head: bytes, chunked: bool, record: AccessRecord) -> bool:
        await pipe.send(head)
        while (event := await client.next()) is not None:
            if isinstance(event, Data):
                record.bytes_sent += len(event.data)
                await pipe.send(encode_chunk(event.data) if chunked else event.data)
            elif isinstance(event, EndOfMessage) and chunked:
                await pipe.send(encode_last_chunk(event.trailers))
        return True

    async def _respond(
        self,
        session: _Session,
        req: Request,
        backend: _Backend,
        guard: TunnelGuard,
        *,
        target: Authority,
        sender: asyncio.Future[bool],
        keep: bool,
    ) -> bool:
        writer, backends, responses, record = session.writer, session.backends, backend.responses, guard.record
        head: Response | None = None
        rechunk = False
        event: Event | None = None
        try:
            async with asyncio.timeout(self.request_timeout):
                while True:
                    event = await responses.next()
                    if isinstance(event, Response) and 100 <= event.status < 200 and event.status != 101:
                        writer.write(encode_response(event))  # 100 Continue and friends go straight through
                        continue
                    break
            if not isinstance(event, Response):
                raise Http1Error("backend closed the connection without a response")
            head = event
            if head.status == 101:
                return await self._upgraded(session, head, backend, guard, target)
            framing = responses.parser.framing
            open_ended = framing in (Framing.CHUNKED, Framing.UNTIL_CLOSE)
            rechunk = open_ended and req.version == "HTTP/1.1"
            reusable = keep_alive(head) and framing is not Framing.UNTIL_CLOSE
            keep = keep and (rechunk or not open_ended)  # an HTTP/1.0 client learns the end from the close
            headers = end_to_end(head.headers)
            headers += [("transfer-encoding", "chunked")] if rechunk else []
            headers += [] if keep else [("connection", "close")]
            writer.write(encode_response(Response(head.status, head.reason, "HTTP/1.1", tuple(headers))))
            guard.answered(head.status)
            while (event := await responses.next()) is not None:
                if isinstance(event, Data):
                    record.bytes_received += len(event.data)
                    writer.write(encode_chunk(event.data) if rechunk else event.data)
                    await writer.drain()
                elif isinstance(event, EndOfMessage) and rechunk:
                    writer.write(encode_last_chunk(event.trailers))
            await writer.drain()
        except BaseException as e:
            backends.pop(target, None)
            backend.upstream.close()
            if isinstance(e, ProtocolError):  # the backend's bytes were bad: a bad gateway (502), not a bad request
                raise TunnelError(f"malformed response: {e}") from e
            raise  # the guard answers 502/504 before the response head, aborts the client after it
        guard.finish(head.status, "ok")
        if reusable:
            responses.restart()
        else:
            backends.pop(target, None)
            backend.upstream.close()
        if not sender.done() and session.client.parser.done:  # the request is all here; let its last bytes go out
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.request_timeout):
                    await asyncio.wait({sender})
        # A response that came before the whole request body (e.g. an early 413) leaves the client mid-request.
        return keep and sender.done() and not sender.cancelled() and sender.exception() is None

    async def _upgraded(
        self, session: _Session, head: Response, backend: _Backend, guard: TunnelGuard, target: Authority
    ) -> bool:
        """101 Switching Protocols: from here on the connection is an opaque byte relay (WebSocket)."""
        headers = [*end_to_end(head.headers), ("connection", "upgrade"), ("upgrade", head.get("upgrade") or "")]
        session.writer.write(encode_response(Response(101, head.reason, "HTTP/1.1", tuple(headers))))
        session.writer.write(backend.responses.parser.take_buffered())
        session.backends.pop(target, None)
        guard.answered(101)
        await relay(session.reader, session.writer, backend.upstream, guard, session.client.parser.take_buffered())
        return False
