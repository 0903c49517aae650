"""Cross-check the sans-IO gRPC pieces against grpcio (C-core), the peer we must interoperate with.

Both directions over loopback with a tiny blocking h2 driver written here (the product's asyncio driver lives in
hbone/net/): our headers/framing/trailers against a grpcio server, and a grpcio client against our header
validation, decoder and trailers. Checks percent-encoding, -bin metadata, grpc-timeout, gzip and status details.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from google.rpc import status_pb2

from hbone.errors import GrpcStatus
from hbone.grpc.framing import MessageDecoder, encode_message
from hbone.grpc.metadata import RequestInfo, request_headers, response_headers, validate_request_headers
from hbone.grpc.status import Status, parse_response_headers, parse_trailers, trailers

pytestmark = pytest.mark.interop

UNICODE_MSG = "nöt found: 100% \u2603\n\ttabs and\x7f del"
DETAILS = status_pb2.Status(code=5, message="rich").SerializeToString()


# --- a grpcio server, our client ------------------------------------------------------------------------------


def _echo(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    return req


def _fail(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    ctx.set_trailing_metadata((("grpc-status-details-bin", DETAILS), ("x-trailer", "t")))
    ctx.abort(grpc.StatusCode.NOT_FOUND, UNICODE_MSG)
    raise AssertionError("unreachable")


def _inspect(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    md = {k: v for k, v in ctx.invocation_metadata()}
    remaining = ctx.time_remaining()
    return repr((md.get("x-text"), md.get("x-data-bin"), remaining is not None and 1.0 < remaining <= 2.5)).encode()


@pytest.fixture(scope="module")
def grpcio_port() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(4), compression=grpc.Compression.Gzip)
    methods = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
               [("Echo", _echo), ("Fail", _fail), ("Inspect", _inspect)]}  # fmt: skip
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.S", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def call(port: int, path: str, messages: list[bytes], *, encoding: str | None = None, **kw: Any) -> dict[str, Any]:
    """One call with a blocking socket; returns response headers, messages and trailers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, request_headers(path, f"127.0.0.1:{port}", encoding=encoding, **kw))
    for m in messages:
        conn.send_data(1, encode_message(m, compress=encoding is not None, encoding=encoding))
    conn.end_stream(1)
    result: dict[str, Any] = {"messages": []}
    dec: MessageDecoder | None = None
    try:
        while "ended" not in result:
            sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            assert data, "server closed the connection"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    result["headers"] = ev.headers
                    if ev.stream_ended is None:
                        dec = MessageDecoder(encoding=parse_response_headers(ev.headers).encoding)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                    assert dec is not None
                    result["messages"] += dec.feed(ev.data)
                elif isinstance(ev, h2.events.TrailersReceived):
                    result["trailers"] = ev.headers
                elif isinstance(ev, h2.events.StreamEnded):
                    result["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    raise AssertionError(f"stream reset {ev.error_code}")
    finally:
        sock.close()
    if dec is not None:
        dec.close()
    result["status"], result["trailing"] = parse_trailers(result.get("trailers") or result["headers"])
    return result


def test_grpcio_echo_with_gzip_both_ways(grpcio_port: int) -> None:
    big = b"compressible " * 5000
    r = call(grpcio_port, "/test.S/Echo", [big], encoding="gzip")
    assert r["status"] == Status(GrpcStatus.OK)
    assert r["messages"] == [big]
    assert dict((k.decode(), v.decode()) for k, v in r["headers"])["grpc-encoding"] == "gzip"


def test_grpcio_error_message_details_and_trailers(grpcio_port: int) -> None:
    r = call(grpcio_port, "/test.S/Fail", [b""])
    status: Status = r["status"]
    assert status.code is GrpcStatus.NOT_FOUND
    assert status.message == UNICODE_MSG  # grpc-core's percent-encoding decodes to the same text
    assert status.details == DETAILS
    assert r["trailing"].get("x-trailer") == "t"
    raw_message = dict(r.get("trailers") or r["headers"])[b"grpc-message"].decode()
    from hbone.grpc.status import encode_grpc_message

    assert raw_message == encode_grpc_message(UNICODE_MSG)  # byte-for-byte the same encoding as C-core


def test_grpcio_reads_our_metadata_and_timeout(grpcio_port: int) -> None:
    r = call(
        grpcio_port, "/test.S/Inspect", [b""], timeout=2.0, metadata=[("x-text", "hi"), ("x-data-bin", b"\x00\xfe")]
    )
    assert r["messages"] == [repr(("hi", b"\x00\xfe", True)).encode()]


def test_grpcio_unknown_method_is_unimplemented(grpcio_port: int) -> None:
    assert call(grpcio_port, "/test.S/Nope", [b""])["status"].code is GrpcStatus.UNIMPLEMENTED


# --- a grpcio client, our server ------------------------------------------------------------------------------


@contextmanager
def our_server(
    respond: Callable[[RequestInfo, list[bytes]], tuple[list[bytes], Status, list[Any]]],
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Serve one connection with h2 + our sans-IO pieces; ``seen`` records what the request looked like."""
    lsock = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, Any] = {}

    def serve() -> None:
        sock, _ = lsock.accept()
        sock.settimeout(5)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        decoders: dict[int, MessageDecoder] = {}
        msgs: dict[int, list[bytes]] = {}
        infos: dict[int, RequestInfo] = {}
        try:
            while True:
                sock.sendall(conn.data_to_send())
                data = sock.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        seen["headers"] = ev.headers
                        infos[ev.stream_id] = info = validate_request_headers(ev.headers)
                        decoders[ev.stream_id] = MessageDecoder(encoding=info.encoding)
                        msgs[ev.stream_id] = []
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        msgs[ev.stream_id] += decoders[ev.stream_id].feed(ev.data)
                    elif isinstance(ev, h2.events.StreamEnded):
                        info = infos[ev.stream_id]
                        seen["info"], seen["messages"] = info, msgs[ev.stream_id]
                        out, status, md = respond(info, msgs[ev.stream_id])
                        enc = "gzip" if "gzip" in info.accept_encoding else None
                        conn.send_headers(ev.stream_id, response_headers(enc))
                        for m in out:
                            conn.send_data(ev.stream_id, encode_message(m, compress=True, encoding=enc))
                        conn.send_headers(ev.stream_id, trailers(status, md), end_stream=True)
        except OSError:
            return
        finally:
            sock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1], seen
    finally:
        lsock.close()
        t.join(5)


def test_grpcio_client_against_our_framing() -> None:
    def respond(info: RequestInfo, msgs: list[bytes]) -> tuple[list[bytes], Status, list[Any]]:
        return [b"reply:" + msgs[0]], Status(GrpcStatus.OK), [("x-done", "yes")]

    with our_server(respond) as (port, seen), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        fn = ch.unary_unary("/test.S/Do")
        reply, call_ = fn.with_call(
            b"x" * 1000, timeout=3, metadata=[("x-k", "v"), ("k-bin", b"\x00\xff")], compression=grpc.Compression.Gzip
        )
    assert reply == b"reply:" + b"x" * 1000
    assert ("x-done", "yes") in call_.trailing_metadata()
    info: RequestInfo = seen["info"]
    assert (info.service, info.method, info.encoding) == ("test.S", "Do", "gzip")
    # grpcio's grpc-timeout parsed; C-core rounds up to a "nice" value (3S becomes 3010m).
    assert info.timeout is not None and 2.0 < info.timeout <= 3.1
    assert info.metadata.get("x-k") == "v" and info.metadata.get("k-bin") == b"\x00\xff"
    assert info.user_agent is not None and "grpc-python" in info.user_agent
    # grpcio really compressed the request (flag 1): the decoder inflated it.
    assert seen["messages"] == [b"x" * 1000]


def test_grpcio_client_sees_our_status_message_and_details() -> None:
    def respond(info: RequestInfo, msgs: list[bytes]) -> tuple[list[bytes], Status, list[Any]]:
        return [], Status(GrpcStatus.FAILED_PRECONDITION, UNICODE_MSG, DETAILS), [("x-why", "because")]

    with (
        our_server(respond) as (port, _),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
        pytest.raises(grpc.RpcError) as ei,
    ):
        ch.unary_unary("/test.S/Do")(b"", timeout=3)
    err: Any = ei.value
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == UNICODE_MSG
    md = dict(err.trailing_metadata())
    assert md["grpc-status-details-bin"] == DETAILS and md["x-why"] == "because"
