"""Transparent capture on Linux: REDIRECT (SO_ORIGINAL_DST, IPv4 + IPv6) and TPROXY (IP_TRANSPARENT).

Outbound (:15001): iptables sends an unmodified client's connection to our listener; the original destination
comes from `SO_ORIGINAL_DST` (REDIRECT/DNAT, conntrack keeps it) or is simply the accepted socket's local
address (TPROXY, which never rewrites the packet). The destination is then routed like any front end's.
Inbound plaintext (:15006): captured connections from outside the mesh are authorized (no identity) and
passed to the original destination, optionally behind a PROXY v2 header. The proxy's own connections carry
SO_MARK `mark` so the rules skip them (ztunnel uses 0x539 the same way) instead of capturing them again.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import struct

from hbone.authz.model import Connection
from hbone.errors import Denied, SelfCall
from hbone.net.relay import IDLE_TIMEOUT, TcpEnd
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, Upstream, dial_tcp, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import Authorizer
from hbone.proxy.listener import ConnectionHandler, start_listener
from hbone.proxy.responders import TcpResponder
from hbone.wire.authority import Authority
from hbone.wire.proxyv2 import proxy_header

log = logging.getLogger("hbone.capture")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
IP_TRANSPARENT = 19  # linux/in.h
IPV6_TRANSPARENT = 75  # linux/in6.h
DEFAULT_MARK = 0x539
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006


def capture_mark(configured: int | None) -> int | None:
    """The SO_MARK for the dials of a process that runs a capture listener.

    Unset, it is `DEFAULT_MARK`, which the capture rules always skip: without a mark the proxy's own direct dials
    would be captured again and loop through the listener. Setting a mark needs CAP_NET_ADMIN; a proxy without it
    dials unmarked (said once at start), and its rules must skip it another way (`--exclude-uid`).
    """
    if configured is not None:
        return configured
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, DEFAULT_MARK)
        except OSError as e:
            log.warning(
                "capture: cannot mark our own dials with SO_MARK 0x%x (%s): the capture rules must skip this "
                "process by uid (--exclude-uid), or its direct dials are captured again",
                DEFAULT_MARK,
                e.strerror or e,
            )
            return None
    return DEFAULT_MARK


class CaptureMode(enum.Enum):
    REDIRECT = "redirect"
    TPROXY = "tproxy"


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """A kernel `sockaddr_in` / `sockaddr_in6` (as SO_ORIGINAL_DST returns it) → (ip, port)."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr of {len(raw)} bytes is too short")
    (family,) = struct.unpack_from("=H", raw, 0)  # sa_family is host byte order
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"sockaddr family {family} is neither AF_INET nor AF_INET6")


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed connection was going. IPv4 first (also for v4-mapped peers on a v6 socket)."""
    errors = []
    for level, opt, size in ((socket.SOL_IP, SO_ORIGINAL_DST, 16), (socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)):
        try:
            return _unmap(*parse_sockaddr(sock.getsockopt(level, opt, size)))
        except OSError as e:
            errors.append(e)
    raise OSError(f"no original destination (not a REDIRECTed connection?): {errors[-1]}")


def _unmap(ip: str, port: int) -> tuple[str, int]:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped), port
    return str(addr), port


def transparent_socket(host: str, port: int) -> socket.socket:
    """A listening socket with IP_TRANSPARENT, so TPROXY can hand it connections for any address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _destination(writer: asyncio.StreamWriter, mode: CaptureMode) -> tuple[str, int]:
    sock: socket.socket = writer.get_extra_info("socket")
    if mode is CaptureMode.TPROXY:
        local = sock.getsockname()
        return _unmap(str(local[0]), int(local[1]))
    return original_dst(sock)


async def _start(handler: ConnectionHandler, host: str, port: int, mode: CaptureMode) -> asyncio.Server:
    if mode is CaptureMode.TPROXY:
        return await start_listener(handler, sock=transparent_socket(host, port))
    return await start_listener(handler, host, port)


class OutboundCapture:
    """The :15001 listener: captured connections go wherever the route table sends their original destination."""

    def __init__(self, opener: Opener, mode: CaptureMode = CaptureMode.REDIRECT) -> None:
        self.opener = opener
        self.mode = mode
        self.listen_ports: set[int] = set()
        self.total = 0

    async def start(self, host: str = "127.0.0.1", port: int = OUTBOUND_PORT) -> asyncio.Server:
        server = await _start(self.handle, host, port, self.mode)
        self.listen_ports.add(int(server.sockets[0].getsockname()[1]))
        return server

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.total += 1
        peer = writer.get_extra_info("peername")
        record = AccessRecord("outbound-capture", mode=self.mode.value.upper(), src_addr=fmt_addr(peer))
        # A refusal is a reset: what the client would see had the destination refused.
        with TunnelGuard(record, TcpResponder(writer, reset=True)) as guard:
            ip, port = _destination(writer, self.mode)
            target = Authority.from_parts(ip, port)
            record.dst_addr = str(target)
            if port in self.listen_ports and ipaddress.ip_address(ip).is_loopback:
                raise SelfCall(f"{target} is this capture listener (connection was not redirected)")
            upstream: Upstream = await self.opener.open(target, src=_pair(peer), record=record)
            await relay(reader, writer, upstream, guard)


class InboundPlaintext:
    """The :15006 listener: plaintext connections captured on their way in, authorized without an identity."""

    def __init__(
        self,
        authorize: Authorizer,
        *,
        mode: CaptureMode = CaptureMode.REDIRECT,
        proxy_protocol: bool = False,
        dial_timeout: float = 10.0,
        idle_timeout: float | None = IDLE_TIMEOUT,
        mark: int | None = DEFAULT_MARK,
        namespace: str = "",
    ) -> None:
        self.authorize = authorize
        self.mode = mode
        self.proxy_protocol = proxy_protocol
        self.dial_timeout = dial_timeout
        self.idle_timeout = idle_timeout
        self.mark = mark
        self.namespace = namespace

    async def start(self, host: str = "0.0.0.0", port: int = INBOUND_PORT) -> asyncio.Server:
        return await _start(self.handle, host, port, self.mode)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        record = AccessRecord("inbound-plaintext", mode=self.mode.value.upper(), src_addr=fmt_addr(peer))
        with TunnelGuard(record, TcpResponder(writer, reset=True)) as guard:
            ip, port = _destination(writer, self.mode)
            record.dst_addr = fmt_addr((ip, port))
            src = _unmap(str(peer[0]), int(peer[1]))
            decision = self.authorize(
                Connection(
                    None, ipaddress.ip_address(src[0]), ipaddress.ip_address(ip), port, dst_namespace=self.namespace
                )
            )
            record.policy = decision.policy
            if not decision.allowed:
                raise Denied(f"denied: {decision.reason}")
            up_reader, up_writer = await dial_tcp(ip, port, connect_timeout=self.dial_timeout, mark=self.mark)
            pipe = TcpEnd(up_reader, up_writer)
            if self.proxy_protocol:
                pipe.write(proxy_header(src, (ip, port)))
            await relay(reader, writer, Upstream(pipe, None, idle_timeout=self.idle_timeout), guard)


def _pair(addr: object) -> tuple[str, int] | None:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    return _unmap(str(addr[0]), int(addr[1]))
