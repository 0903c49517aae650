"""Failing tunnels of every kind through real listeners: exactly one access record each, with the right status
and reason, and the right answer on the client's wire (HBONE status or RST_STREAM, SOCKS5 REP, HTTP/1 status).

Each case waits for its own record, and every test ends by checking that no tunnel was recorded twice (or
opened without being closed) on the admin sink every front end feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hbone import limits
from hbone.authz.engine import Decision
from hbone.authz.model import Connection
from hbone.client import Endpoint, HboneClient
from hbone.errors import ConnectRefused, H2ErrorCode, HboneError, StreamReset
from hbone.net.endpoints import connect
from hbone.net.settings import H2Settings
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Dialer
from hbone.proxy.httpproxy import HttpConnectProxy
from hbone.proxy.inbound import InboundConfig, InboundHandler, resolve_default
from hbone.proxy.ingress import Ingress, parse_hosts
from hbone.proxy.routing import Action, Match, Route, RouteTable
from hbone.proxy.socks5 import Socks5Proxy
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server
from hbone.wire.authority import Authority

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
IO = 15  # generous bound for any single wait on a loaded machine


class Records:
    """The access sink the admin port uses: hears `opened` once and `closed` once per record."""

    def __init__(self) -> None:
        self.opened_records: list[AccessRecord] = []
        self.closed_records: list[AccessRecord] = []
        self._seen = 0
        self._changed = asyncio.Event()

    def opened(self, record: AccessRecord) -> None:
        self.opened_records.append(record)

    def closed(self, record: AccessRecord) -> None:
        self.closed_records.append(record)
        self._changed.set()

    async def next(self) -> AccessRecord:
        """The next record finished (in order), waiting for it."""

        async def wait() -> AccessRecord:
            while len(self.closed_records) <= self._seen:
                self._changed.clear()
                await self._changed.wait()
            self._seen += 1
            return self.closed_records[self._seen - 1]

        return await asyncio.wait_for(wait(), IO)

    def check_once_each(self, expected: int) -> None:
        assert len(self.closed_records) == expected, [(r.direction, r.status, r.result) for r in self.closed_records]
        assert len({id(r) for r in self.closed_records}) == expected  # no record finished twice
        assert sorted(map(id, self.opened_records)) == sorted(map(id, self.closed_records))


@pytest.fixture
async def records() -> AsyncIterator[Records]:
    sink = Records()
    remove = accesslog.add_sink(sink)
    try:
        yield sink
    finally:
        remove()


def closed_port() -> int:
    """A loopback port nobody listens on (bound then closed: connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def tcp_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that reads the first bytes, then resets the connection (RST, not FIN)."""
    await reader.read(1)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that accepts, reads everything and never answers."""
    while await reader.read(65536):
        pass
    writer.close()


async def broken_after_success(records: Records, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """The tunnel is up; one byte makes the upstream reset: the client's connection ends, the record says broken."""
    w.write(b"x")
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(r.read(), IO) == b""
    w.close()
    rec = await records.next()
    assert rec.status == 200 and rec.result.startswith("broken: ") and rec.bytes_sent == 1, rec


# --- the HBONE inbound (:15008) -------------------------------------------------------------------------------


async def test_hbone_inbound_failures(records: Records, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA()
    deny_port = closed_port()
    dialling = asyncio.Event()

    def authorize(conn: Connection) -> Decision:
        return Decision(conn.dst_port != deny_port, "test-policy", "the test policy has no rule for this port")

    async def resolve(target: Authority) -> tuple[str, int]:
        if target.host == "hang.example":  # a tunnel whose client goes away while it is being dialled
            dialling.set()
            await asyncio.Event().wait()
        return await resolve_default(target)

    tls = ca.mesh_tls("ns", "bob")
    server = HboneServer(tls, InboundHandler(InboundConfig(authorize=authorize, resolve=resolve, tls=tls)))
    _, port = await server.listen("127.0.0.1", 0)
    ep = Endpoint("127.0.0.1", port)
    client = HboneClient(ca.mesh_tls("ns", "alice"))
    try:
        async with tcp_server(resetting) as reset_port:
            # Dial refused: 503 with the OS reason, before any 200.
            refused = closed_port()
            with pytest.raises(ConnectRefused) as err:
                await asyncio.wait_for(client.open(f"127.0.0.1:{refused}", ep), IO)
            assert err.value.status == 503 and "Connection refused" in err.value.detail
            rec = await records.next()
            assert (rec.direction, rec.status, rec.dst_addr) == ("inbound", 503, f"127.0.0.1:{refused}")
            assert rec.result == f"connect to 127.0.0.1:{refused} failed: Connection refused"

            # Authorization denies: 401 with the policy's reason.
            with pytest.raises(ConnectRefused) as err:
                await asyncio.wait_for(client.open(f"127.0.0.1:{deny_port}", ep), IO)
            assert err.value.status == 401 and "no rule for this port" in err.value.detail
            rec = await records.next()
            assert (rec.status, rec.result, rec.policy) == (
                401,
                "denied: the test policy has no rule for this port",
                "test-policy",
            )

            # Denied inside end-to-end mTLS (POST /_hbone/mtls): the 200 went out for the middle box, so the refusal
            # is a reset with the error's code; the record keeps the refusal's status.
            inner = Endpoint.parse(f"127.0.0.1:{port}", identities=[str(ca.spiffe("ns", "bob"))], post=True,
                                   inner_tls=True)  # fmt: skip
            with pytest.raises(StreamReset) as reset:
                tunnel = await asyncio.wait_for(client.open(f"127.0.0.1:{deny_port}", inner), IO)
                await asyncio.wait_for(tunnel.read(), IO)
            assert reset.value.code == H2ErrorCode.REFUSED_STREAM
            rec = await records.next()
            assert rec.status == 401 and rec.result == "inner: denied: the test policy has no rule for this port"

            # Limit exceeded: the process-wide tunnel cap refuses with 503 and names the limit.
            monkeypatch.setattr(limits.TUNNELS, "limit", limits.TUNNELS.in_use)
            with pytest.raises(ConnectRefused) as err:
                await asyncio.wait_for(client.open(f"127.0.0.1:{reset_port}", ep), IO)
            monkeypatch.undo()
            assert err.value.status == 503 and "max_tunnels" in err.value.detail
            rec = await records.next()
            assert rec.status == 503 and "max_tunnels" in rec.result

            # Peer reset after the 200: RST_STREAM CONNECT_ERROR to the client (RFC 9113 §8.5), "broken" record.
            tunnel = await asyncio.wait_for(client.open(f"127.0.0.1:{reset_port}", ep), IO)
            tunnel.write(b"x")
            with pytest.raises(StreamReset) as reset:
                await asyncio.wait_for(tunnel.read(), IO)
            assert reset.value.code == H2ErrorCode.CONNECT_ERROR
            rec = await records.next()
            assert rec.status == 200 and rec.result.startswith("broken: ") and rec.bytes_sent == 1, rec

        # The client goes away while its tunnel is being dialled: still one record (it used to leave none).
        other = HboneClient(ca.mesh_tls("ns", "carol"))
        opening = asyncio.ensure_future(other.open("hang.example:80", ep))
        await asyncio.wait_for(dialling.wait(), IO)
        await other.close()
        with contextlib.suppress(HboneError, asyncio.CancelledError):
            await asyncio.wait_for(opening, IO)
        rec = await records.next()
        assert (rec.status, rec.result, rec.src_identity) == (499, "cancelled", str(ca.spiffe("ns", "carol")))
    finally:
        await client.close()
        await server.close()
    records.check_once_each(6)


# --- front ends that answer in their own protocol ------------------------------------------------------------


def direct_dialer(deny_port: int) -> Dialer:
    deny = Route("no-such-port", Action.DENY, Match(ports=(deny_port,)))
    return Dialer(None, RouteTable((deny,), Route("default", Action.DIRECT)))


async def socks_connect(port: int, target_port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", target_port))
    reply = await asyncio.wait_for(reader.readexactly(10), IO)
    return reader, writer, reply[1]


async def test_socks5_failures(records: Records) -> None:
    deny_port, refused = closed_port(), closed_port()
    proxy = Socks5Proxy(direct_dialer(deny_port), handshake_timeout=0.5)
    server = await proxy.start("127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        _, w, rep = await socks_connect(port, refused)  # dial refused: REP 0x05
        w.close()
        assert rep == 0x05
        rec = await records.next()
        assert (rec.direction, rec.status) == ("socks5", 503)
        assert rec.result == f"CONNECTION_REFUSED: connect to 127.0.0.1:{refused} failed: Connection refused"

        _, w, rep = await socks_connect(port, deny_port)  # the route table denies: REP 0x02
        w.close()
        assert rep == 0x02
        rec = await records.next()
        assert rec.status == 403 and rec.result.startswith("NOT_ALLOWED: destination 127.0.0.1:")

        r, w = await asyncio.open_connection("127.0.0.1", port)  # handshake never sent: closed, nothing answered
        assert await asyncio.wait_for(r.read(), IO) == b""
        w.close()
        rec = await records.next()
        assert (rec.status, rec.result) == (408, "SOCKS handshake not complete within 0.5s")

        async with tcp_server(resetting) as reset_port:  # peer reset after SUCCEEDED: the client is reset too
            r, w, rep = await socks_connect(port, reset_port)
            assert rep == 0x00
            await broken_after_success(records, r, w)
    finally:
        server.close()
    records.check_once_each(4)


async def http_connect(port: int, target_port: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO)
    return head, reader, writer


async def test_http_proxy_and_ingress_failures(records: Records) -> None:
    deny_port, refused = closed_port(), closed_port()
    dialer = direct_dialer(deny_port)
    server = await HttpConnectProxy(dialer).start("127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        head, r, w = await http_connect(port, refused)  # dial refused: 502 with the reason
        body = await asyncio.wait_for(r.read(), IO)
        w.close()
        assert head.startswith(b"HTTP/1.1 502 ") and b"Connection refused" in body
        rec = await records.next()
        assert (rec.direction, rec.status) == ("http-connect", 502)
        assert rec.result == f"connect to 127.0.0.1:{refused} failed: Connection refused"

        head, r, w = await http_connect(port, deny_port)  # the route table denies: 403
        w.close()
        assert head.startswith(b"HTTP/1.1 403 ")
        rec = await records.next()
        assert rec.status == 403 and "not allowed" in rec.result

        async with tcp_server(resetting) as reset_port:  # peer reset after 200: the client connection breaks
            head, r, w = await http_connect(port, reset_port)
            assert head.startswith(b"HTTP/1.1 200 ")
            await broken_after_success(records, r, w)

        # An HTTP ingress whose backend never answers: 504 once the request timeout passed, one record.
        async with tcp_server(silent) as silent_port:
            ingress = Ingress(dialer, hosts=parse_hosts({"slow.example": f"127.0.0.1:{silent_port}"}),
                              request_timeout=0.5)  # fmt: skip
            front = await ingress.start_http("127.0.0.1", 0)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", int(front.sockets[0].getsockname()[1]))
                w.write(b"GET /x HTTP/1.1\r\nHost: slow.example\r\n\r\n")
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), IO)
                w.close()
                assert head.startswith(b"HTTP/1.1 504 ")
                rec = await records.next()
                assert (rec.direction, rec.status, rec.request) == ("ingress-http", 504, "GET slow.example/x")
                assert rec.result == "timed out"

                # The same over HTTP/2 (h2c prior knowledge): 404 for a host without a route, 504 for the silent
                # backend; one record per request stream, and one for the pooled backend connection when it closes.
                conn = await connect("127.0.0.1", int(front.sockets[0].getsockname()[1]), settings=H2Settings.client())
                try:
                    for host, status in (("nobody.example", 404), ("slow.example", 504)):
                        stream = await conn.open_stream(
                            [(":method", "GET"), (":scheme", "http"), (":path", "/y"), (":authority", host)],
                            end_stream=True,
                        )
                        response = dict(await asyncio.wait_for(stream.response_headers(), IO))
                        assert response[b":status"] == str(status).encode()
                        rec = await records.next()
                        assert (rec.direction, rec.mode, rec.status) == ("ingress-http", "HTTP/2", status)
                        assert rec.request == f"GET {host}/y"
                    assert rec.result == "timed out"
                finally:
                    await conn.close()
            finally:
                front.close()
                await ingress.close()
            rec = await records.next()
            assert (rec.direction, rec.status, rec.result) == ("ingress-h2-upstream", 200, "closed")

            # TLS passthrough without a usable ClientHello: closed, and recorded (it used to leave no record).
            front = await ingress.start_tls_passthrough("127.0.0.1", 0)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", int(front.sockets[0].getsockname()[1]))
                w.write(b"GET / HTTP/1.1\r\nHost: slow.example\r\n\r\n")
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(r.read(), IO) == b""
                w.close()
                rec = await records.next()
                assert (rec.direction, rec.status) == ("ingress-tls", 400) and "TLS" in rec.result, rec
            finally:
                front.close()
    finally:
        server.close()
    records.check_once_each(8)


async def test_echo_is_still_ok(records: Records) -> None:
    """The success path through the same guard: one record, "ok", bytes both ways."""
    echo, echo_port = await start_echo_server()
    proxy = Socks5Proxy(direct_dialer(closed_port()))
    server = await proxy.start("127.0.0.1", 0)
    try:
        r, w, rep = await socks_connect(int(server.sockets[0].getsockname()[1]), echo_port)
        assert rep == 0x00
        w.write(b"hello")
        assert await asyncio.wait_for(r.readexactly(5), IO) == b"hello"
        w.write_eof()
        assert await asyncio.wait_for(r.read(), IO) == b""
        w.close()
        rec = await records.next()
        assert (rec.status, rec.result, rec.bytes_sent, rec.bytes_received) == (200, "ok", 5, 5)
        assert rec.closed_by == "downstream"  # the client's EOF came first
    finally:
        server.close()
        echo.close()
    records.check_once_each(1)
