"""A small asyncio HTTP/1.1 server for the admin, metrics and readiness ports (one implementation for all).

One GET (or HEAD) per connection, answered and closed. Whatever the peer controls is bounded: the request head
(8 KiB, 32 fields, parsed by `hbone.wire.http1`), the time to send it (5 s), connections at once (64), and bodies
(refused: the admin API takes its arguments in the query string). Handlers are plain functions of the parsed
request returning a `Response`; a handler that raises answers 500 with one line and never takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hbone.errors import ConfigError, HboneError
from hbone.wire.http1 import Data, EndOfMessage, Http1Error, MessageReader, Request

log = logging.getLogger("hbone.admin")

MAX_HEAD = 8 * 1024
MAX_FIELDS = 32
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class Query:
    """The parsed request: path and the query string's arguments (last value wins)."""

    path: str
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, indent=1, default=str).encode() + b"\n", "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


Handler = Callable[[Query], Response]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


class HttpServer:
    """Serve `routes` (exact paths) on one address. `await start()` returns the bound (host, port)."""

    def __init__(self, routes: Mapping[str, Handler], *, name: str = "admin") -> None:
        self.routes = dict(routes)
        self.name = name
        self._server: asyncio.AbstractServer | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, flag: str = "--admin") -> tuple[str, int]:
        try:
            self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as exc:
            why = "address in use" if exc.errno == 98 else (exc.strerror or str(exc))
            raise ConfigError(f"{flag} {host}:{port}: {why} (choose another HOST:PORT, or {flag} off)") from None
        sock: Any = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._slots.locked():  # over the connection limit: close at once rather than queue
                writer.transport.abort()
                return
            async with self._slots:
                await self._serve_one(reader, writer)
        except (OSError, TimeoutError, asyncio.CancelledError):
            writer.transport.abort()
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), HEAD_TIMEOUT)
        except TimeoutError:
            return await _send(writer, Response.text("request head not received in time\n", 408), head_only=False)
        except HboneError as exc:
            status = getattr(exc, "http_status", 400)
            return await _send(writer, Response.text(f"{exc}\n", status), head_only=False)
        if request is None:
            return None
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return await _send(writer, Response.text("only GET\n", 405), head_only)
        url = urlsplit(request.target)
        query = Query(url.path, dict(parse_qsl(url.query, keep_blank_values=True)))
        handler = self.routes.get(query.path)
        if handler is None:
            listing = "".join(f"{p}\n" for p in sorted(self.routes))
            return await _send(writer, Response.text(f"not found; this port serves:\n{listing}", 404), head_only)
        try:
            response = handler(query)
        except ConfigError as exc:  # a bad argument (e.g. /logging?level=loud)
            response = Response.text(f"{exc}\n", 400)
        except Exception as exc:  # one failing view must not take the port down
            log.warning("%s %s failed: %r", self.name, query.path, exc)
            response = Response.text(f"internal error: {exc!r}\n", 500)
        await _send(writer, response, head_only)
        return None


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    parser = MessageReader(max_head=MAX_HEAD, max_headers=MAX_FIELDS)
    head: Request | None = None
    while True:
        data = await reader.read(4096)
        events = parser.feed(data) if data else parser.eof()
        for event in events:
            if isinstance(event, Request):
                head = event
            elif isinstance(event, Data):
                raise Http1Error("the admin API takes no request body")
            elif isinstance(event, EndOfMessage):
                return head
        if not data:
            return None


async def _send(writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
    reason = _REASONS.get(response.status, "")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + (b"" if head_only else response.body))
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
