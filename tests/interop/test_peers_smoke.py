"""Smoke tests for the interop harness: every real peer starts, talks over loopback and is cleaned up.

They also prove the recipes in docs/interop.md on this machine: Envoy tcp_proxy,
Envoy as HBONE server and as HBONE client (each against a Python `h2` peer), etcd, curl, node.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from tests.peers import (
    LOOPBACK,
    NODE_DIR,
    Envoy,
    Etcd,
    ProcessPeer,
    TestPKI,
    arun_peer,
    check_loopback,
    close_server,
    envoy_hbone_client_config,
    envoy_hbone_server_config,
    envoy_tcp_proxy_config,
    envoy_validate,
    free_port,
    make_test_pki,
    peer_uri_sans,
    require_binary,
    require_envoy,
    require_node_xds,
    start_http_server,
    start_tls_echo_server,
    wait_port,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

IO_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------------
# Envoy: plain tcp_proxy


async def test_envoy_tcp_proxy_to_echo(echo_port: int) -> None:
    require_envoy()
    config = envoy_tcp_proxy_config(echo_port, cluster="echo")
    async with Envoy(config) as envoy:
        await envoy.wait_ready()
        port = await envoy.listener_port("tcp_in")
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            payload = b"through envoy and back\n" * 100
            writer.write(payload)
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)  # until the echoed FIN
        finally:
            writer.close()
        assert echoed == payload, envoy.log_tail()
        await envoy.wait_stat("cluster.echo.upstream_cx_total", lambda v: int(v) >= 1)
        dump = await envoy.config_dump()
        clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
        assert "echo" in [c["cluster"]["name"] for c in clusters["static_clusters"]]


def test_envoy_validate_mode() -> None:
    require_envoy()
    good = envoy_validate(envoy_tcp_proxy_config(9))
    assert good.ok, good.output
    bad = envoy_tcp_proxy_config(9)
    bad["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    result = envoy_validate(bad)
    assert not result.ok
    assert "NOT_A_TYPE" in result.output


def test_envoy_configs_must_stay_on_loopback() -> None:
    config = envoy_tcp_proxy_config(9)
    check_loopback(config)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "0.0.0.0"
    with pytest.raises(ValueError, match="not loopback"):
        check_loopback(config)


# --------------------------------------------------------------------------------------------------
# Envoy as HBONE server: a Python h2 client tunnels to our echo server through it


@dataclass
class ConnectResult:
    status: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    alpn: str | None = None
    server_sans: list[str] = field(default_factory=list)


async def h2_connect_echo(port: int, ctx: ssl.SSLContext, authority: str, payload: bytes) -> ConnectResult:
    """CONNECT ``authority`` over h2+TLS to 127.0.0.1:``port``, send ``payload``, half-close, read to the end."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx)
    result = ConnectResult()
    ssl_obj = writer.get_extra_info("ssl_object")
    result.alpn = ssl_obj.selected_alpn_protocol()
    result.server_sans = peer_uri_sans(ssl_obj)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
    writer.write(conn.data_to_send())
    sent = False
    try:
        async with asyncio.timeout(IO_TIMEOUT):
            while not result.ended:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived):
                        result.headers = {str(k): str(v) for k, v in event.headers}
                        result.status = result.headers.get(":status")
                    elif isinstance(event, h2.events.DataReceived):
                        result.data += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        result.ended = True
                if result.status == "200" and not sent:
                    step = conn.max_outbound_frame_size  # payload fits the initial window; frames do not
                    for i in range(0, len(payload), step):
                        conn.send_data(sid, payload[i : i + step])
                    conn.end_stream(sid)  # END_STREAM = TCP half-close
                    sent = True
                elif result.status not in (None, "200"):
                    break
                writer.write(conn.data_to_send())
                await writer.drain()
    finally:
        writer.close()
    return result


async def test_envoy_hbone_server_recipe(pki: TestPKI, echo_port: int) -> None:
    require_envoy()
    server = pki["server"]
    config = envoy_hbone_server_config(cert_chain=server.cert_chain, key=server.key, root_cert=server.root_cert)
    async with Envoy(config) as envoy:
        await envoy.wait_ready()
        port = await envoy.listener_port("hbone_in")
        payload = b"hbone over envoy " * 1000
        res = await h2_connect_echo(port, pki["client"].client_context(), f"{LOOPBACK}:{echo_port}", payload)
        assert res.alpn == "h2"
        assert res.server_sans == [server.spiffe_id]
        assert res.status == "200", (res.headers, envoy.log_tail())
        assert res.data == payload, envoy.log_tail()
        assert res.ended, "the echo server's FIN should end the stream"
        await envoy.wait_stat("cluster.orig_dst.upstream_cx_total", lambda v: int(v) >= 1)


async def test_envoy_hbone_server_rejects_client_without_cert(pki: TestPKI, echo_port: int) -> None:
    require_envoy()
    server = pki["server"]
    config = envoy_hbone_server_config(cert_chain=server.cert_chain, key=server.key, root_cert=server.root_cert)
    async with Envoy(config) as envoy:
        await envoy.wait_ready()
        port = await envoy.listener_port("hbone_in")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=server.root_cert)
        ctx.set_alpn_protocols(["h2"])
        # In TLS 1.3 the server checks the client certificate after the client's handshake finished,
        # so the refusal shows up on the first read, as an alert or a closed connection.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            res = await h2_connect_echo(port, ctx, f"{LOOPBACK}:{echo_port}", b"x")
            if res.status is None:
                raise ConnectionError("closed without a response")
        await envoy.wait_stat("listener.hbone_in.ssl.fail_verify_no_cert", lambda v: int(v) >= 1)


async def test_envoy_hbone_server_rejects_foreign_trust_domain(tmp_path: Path, echo_port: int) -> None:
    """Same CA, but the client's SPIFFE id is outside spiffe://cluster.local/: the SAN matcher refuses it."""
    require_envoy()
    pki = make_test_pki(tmp_path, ["server", "spiffe://other.example/ns/default/sa/client"])
    server = pki["server"]
    config = envoy_hbone_server_config(cert_chain=server.cert_chain, key=server.key, root_cert=server.root_cert)
    async with Envoy(config) as envoy:
        await envoy.wait_ready()
        port = await envoy.listener_port("hbone_in")
        ctx = pki["spiffe://other.example/ns/default/sa/client"].client_context()
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            res = await h2_connect_echo(port, ctx, f"{LOOPBACK}:{echo_port}", b"x")
            if res.status is None:
                raise ConnectionError("closed without a response")
        await envoy.wait_stat("listener.hbone_in.ssl.fail_verify_san", lambda v: int(v) >= 1)


# --------------------------------------------------------------------------------------------------
# Envoy as HBONE client: its tcp_proxy tunnels to a minimal Python h2 CONNECT server


@dataclass
class SeenRequest:
    headers: list[tuple[str, str]]
    client_sans: list[str]
    alpn: str | None


class H2ConnectEchoServer:
    """Answers every CONNECT with 200 and echoes the stream's DATA back; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[SeenRequest] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_obj = writer.get_extra_info("ssl_object")
        sans, alpn = peer_uri_sans(ssl_obj), ssl_obj.selected_alpn_protocol()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while chunk := await reader.read(65536):
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = [(str(k), str(v)) for k, v in event.headers]
                        self.seen.append(SeenRequest(headers, sans, alpn))
                        ok = dict(headers).get(":method") == "CONNECT"
                        conn.send_headers(event.stream_id, [(":status", "200" if ok else "405")], end_stream=not ok)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        conn.send_data(event.stream_id, event.data)  # small payloads: within the peer's window
                    elif isinstance(event, h2.events.StreamEnded):
                        conn.end_stream(event.stream_id)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def test_envoy_hbone_client_recipe(pki: TestPKI) -> None:
    require_envoy()
    server_id, client_id = pki["server"], pki["client"]
    h2_server = H2ConnectEchoServer()
    tls_server = await asyncio.start_server(h2_server.handle, LOOPBACK, 0, ssl=server_id.server_context())
    try:
        hbone_port = int(tls_server.sockets[0].getsockname()[1])
        target = f"{LOOPBACK}:18080"  # only carried as :authority; nothing connects to it
        config = envoy_hbone_client_config(
            target=target,
            hbone_port=hbone_port,
            cert_chain=client_id.cert_chain,
            key=client_id.key,
            root_cert=client_id.root_cert,
            peer_san=server_id.spiffe_id,
        )
        async with Envoy(config) as envoy:
            await envoy.wait_ready()
            port = await envoy.listener_port("hbone_out")
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                payload = b"tunneled by envoy " * 500
                writer.write(payload)
                echoed = await asyncio.wait_for(reader.readexactly(len(payload)), IO_TIMEOUT)
                writer.write_eof()
                rest = await asyncio.wait_for(reader.read(-1), IO_TIMEOUT)  # our END_STREAM comes back as FIN
            finally:
                writer.close()
            assert echoed == payload, envoy.log_tail()
            assert rest == b""
            await envoy.wait_stat("cluster.hbone_upstream.upstream_cx_total", lambda v: int(v) >= 1)
    finally:
        await close_server(tls_server)

    assert len(h2_server.seen) == 1
    seen = h2_server.seen[0]
    # ztunnel's wire form: nothing but the two pseudo-headers.
    assert seen.headers == [(":method", "CONNECT"), (":authority", target)]
    assert seen.client_sans == [client_id.spiffe_id]
    assert seen.alpn == "h2"


# --------------------------------------------------------------------------------------------------
# Command-line peers


@pytest.mark.parametrize(
    ("binary", "args", "expected"),
    [
        ("openssl", ["version"], "OpenSSL 3."),
        ("curl", ["--version"], "curl "),
        ("h2load", ["--version"], "nghttp2/"),
        ("nghttp", ["--version"], "nghttp2/"),
        ("etcd", ["--version"], "etcd Version:"),
        ("node", ["--version"], "v"),
    ],
)
async def test_peer_reports_version(binary: str, args: list[str], expected: str) -> None:
    proc = await arun_peer([require_binary(binary), *args], timeout=15)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout + proc.stderr


async def test_envoy_reports_version() -> None:
    proc = await arun_peer([require_envoy(), "--version"], timeout=15)
    assert proc.returncode == 0, proc.stderr
    assert "/RELEASE/" in proc.stdout


async def test_curl_against_tiny_http_server() -> None:
    curl = require_binary("curl")
    server, port = await start_http_server(b"fixed body\n")
    try:
        proc = await arun_peer([curl, "-sS", "--max-time", "10", f"http://{LOOPBACK}:{port}/x"], timeout=15)
    finally:
        await close_server(server)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "fixed body\n"


async def test_openssl_against_tls_echo_server(pki: TestPKI) -> None:
    """openssl checks our test PKI strictly (-x509_strict) and sees TLS 1.3 + ALPN h2 + mTLS."""
    openssl = require_binary("openssl")
    server_id, client_id = pki["server"], pki["client"]
    server, port = await start_tls_echo_server(server_id.server_context())
    try:
        proc = await arun_peer(
            [openssl, "s_client", "-connect", f"{LOOPBACK}:{port}", "-tls1_3", "-alpn", "h2",
             "-cert", client_id.cert_chain, "-key", client_id.key, "-CAfile", client_id.root_cert,
             "-verify_return_error", "-x509_strict"],
            timeout=15,
        )  # fmt: skip
        # And a Python client through the same server: bytes echo, server identity is the URI SAN.
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=client_id.client_context())
        try:
            assert peer_uri_sans(writer.get_extra_info("ssl_object")) == [server_id.spiffe_id]
            writer.write(b"tls echo")
            assert await asyncio.wait_for(reader.readexactly(8), IO_TIMEOUT) == b"tls echo"
        finally:
            writer.close()
    finally:
        await close_server(server)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "New, TLSv1.3" in proc.stdout
    assert "ALPN protocol: h2" in proc.stdout
    assert "Verify return code: 0 (ok)" in proc.stdout


async def test_node_loads_grpc_js_xds() -> None:
    node = require_node_xds()
    proc = await arun_peer([node, NODE_DIR / "versions.js"], timeout=30)
    assert proc.returncode == 0, proc.stderr
    versions = json.loads(proc.stdout)
    assert versions["grpcJsXds"].startswith("1.")


async def test_node_unary_call_to_grpcio() -> None:
    """The raw-bytes node client used by the proxyless xDS tests, here against a direct target."""
    node = require_node_xds()
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(lambda req, _ctx: b"pong:" + req)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        proc = await arun_peer(
            [node, NODE_DIR / "unary-call.js", "--target", f"{LOOPBACK}:{port}", "--method", "/test.Echo/Ping",
             "--request-hex", b"ping".hex(), "--timeout-ms", "10000"],
            timeout=30,
        )  # fmt: skip
    finally:
        server.stop(grace=None).wait(5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert bytes.fromhex(json.loads(proc.stdout)["responseHex"]) == b"pong:ping"


async def test_curl_via_microsocks() -> None:
    """Reference SOCKS5 server: ProcessPeer + wait_port, and curl's --socks5-hostname path."""
    curl, microsocks = require_binary("curl"), require_binary("microsocks")
    server, http_port = await start_http_server(b"via socks\n")
    port = free_port()  # microsocks cannot report a port it picked; the recipes say always pass -i
    try:
        async with ProcessPeer([microsocks, "-i", LOOPBACK, "-p", str(port)]) as socks:
            await wait_port(LOOPBACK, port, timeout=10, peer=socks)
            url = f"http://{LOOPBACK}:{http_port}/"
            proc = await arun_peer([curl, "-sS", "--max-time", "10", "--socks5-hostname", f"{LOOPBACK}:{port}", url])
            assert proc.returncode == 0, proc.stderr + socks.log_tail()
            assert proc.stdout == "via socks\n"
    finally:
        await close_server(server)


async def test_curl_via_tinyproxy_connect(tmp_path: Path) -> None:
    """Reference HTTP CONNECT proxy (what our CONNECT front end is compared against)."""
    curl, tinyproxy = require_binary("curl"), require_binary("tinyproxy")
    server, http_port = await start_http_server(b"via connect\n")
    port = free_port()
    conf = tmp_path / "tinyproxy.conf"
    # No ConnectPort lines: CONNECT is allowed to any port (the Debian default allows only 443/563).
    conf.write_text(f"Port {port}\nListen {LOOPBACK}\nAllow {LOOPBACK}\nTimeout 30\nLogLevel Info\nMaxClients 8\n")
    try:
        async with ProcessPeer([tinyproxy, "-d", "-c", conf]) as proxy:
            await wait_port(LOOPBACK, port, timeout=10, peer=proxy)
            url = f"http://{LOOPBACK}:{http_port}/"
            proc = await arun_peer([curl, "-sS", "--max-time", "10", "-p", "-x", f"http://{LOOPBACK}:{port}", url])
            assert proc.returncode == 0, proc.stderr + proxy.log_tail()
            assert proc.stdout == "via connect\n"
    finally:
        await close_server(server)


# --------------------------------------------------------------------------------------------------
# etcd


async def test_etcd_put_get() -> None:
    require_binary("etcdctl")
    async with Etcd() as etcd:
        await etcd.ctl("put", "/microxds/smoke", "value-1")
        out = await etcd.ctl("get", "/microxds/smoke", "--print-value-only")
        assert out.strip() == "value-1", etcd.log_tail()
