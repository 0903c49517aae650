"""SOCKS5 front end (RFC 1928 CONNECT, RFC 1929 username/password), ztunnel's 127.0.0.1:15080.

The sans-IO state machine (`hbone.wire.socks5`) does the protocol; this shell reads the greeting and request,
asks the route table where the destination goes (HBONE via a server, direct, or refused), answers with the reply
code that says why a connect failed, and relays. The reply is sent only after the upstream is open, so a client
sees "connection refused" / "not allowed" rather than a tunnel that closes at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping

from hbone.errors import ClientClosed
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, Upstream, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard, client_phase
from hbone.proxy.listener import start_listener
from hbone.proxy.responders import SocksResponder
from hbone.wire.socks5 import ConnectRequest, ProtocolViolation, ReplyCode, Socks5Server

log = logging.getLogger("hbone.socks5")

DEFAULT_LISTEN = ("127.0.0.1", 15080)


class Socks5Proxy:
    """Serves SOCKS5 clients; `users` turns on RFC 1929 authentication (constant-time password compare)."""

    def __init__(
        self, dialer: Opener, *, users: Mapping[str, str] | None = None, handshake_timeout: float = 10.0
    ) -> None:
        self.dialer = dialer
        self.users = dict(users or {})
        self.handshake_timeout = handshake_timeout
        self.total = 0

    def _verify(self, user: str, password: str) -> bool:
        want = self.users.get(user)
        return want is not None and hmac.compare_digest(want.encode(), password.encode("utf-8", "surrogateescape"))

    async def start(self, host: str = DEFAULT_LISTEN[0], port: int = DEFAULT_LISTEN[1]) -> asyncio.Server:
        return await start_listener(self.handle, host, port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.total += 1
        peer = writer.get_extra_info("peername")
        record = AccessRecord("socks5", mode="SOCKS5", src_addr=fmt_addr(peer))
        machine = Socks5Server(require_auth=bool(self.users), verifier=self._verify if self.users else None)
        with TunnelGuard(record, SocksResponder(machine, writer)) as guard:  # failures: their REP code, then close
            request = await self._negotiate(machine, reader, writer)
            src = (str(peer[0]), int(peer[1])) if peer else None
            upstream: Upstream = await self.dialer.open(request.target, src=src, record=record)
            local = writer.get_extra_info("sockname")
            machine.reply(ReplyCode.SUCCEEDED, (local[0], local[1]) if local else None)
            writer.write(machine.data_to_send())
            await relay(reader, writer, upstream, guard, machine.take_leftover())

    async def _negotiate(
        self,
        machine: Socks5Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> ConnectRequest:
        """Greeting, authentication and request; a violation raises its `Socks5Error` (its reply is queued)."""
        async with client_phase("SOCKS handshake", self.handshake_timeout):
            while True:
                data = await reader.read(4096)
                if not data:
                    raise ClientClosed("client closed during the SOCKS handshake")
                for event in machine.feed(data):
                    if isinstance(event, ProtocolViolation):
                        raise event.error
                    if isinstance(event, ConnectRequest):
                        writer.write(machine.data_to_send())
                        return event
                out = machine.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
