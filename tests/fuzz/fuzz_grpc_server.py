"""A whole gRPC server connection: the HTTP/2 driver fed arbitrary bytes after a valid preface, with `GrpcServer`
(request-header validation, message decoding with limits and gzip, unary/streaming handlers, health, trailers) as
the application. Documented outcomes are responses, trailers-only rejections, resets and GOAWAY; a handler error
becomes a status. A bug is an exception the driver or the call machinery did not expect, or a call left running."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection

from hbone.errors import HboneError
from hbone.grpc.codec import RawCodec
from hbone.grpc.framing import encode_message
from hbone.grpc.metadata import request_headers
from hbone.grpc.server import GrpcServer, ServerCall
from hbone.net.stream import Stream
from hbone.server import PeerInfo
from tests.fuzz.fuzz_h2_driver import PREFACE, run_app
from tests.fuzz.harness import Harness, pack

_server: GrpcServer | None = None
_PEER = PeerInfo(identity=None, address=("127.0.0.1", 1), tls=False)
ECHO = "/fuzz.Echo/Bidi"
UNARY = "/fuzz.Echo/Unary"


async def _unary(request: bytes, call: ServerCall) -> bytes:
    return request[::-1]


async def _bidi(call: ServerCall) -> None:
    while (message := await call.recv()) is not None:
        await call.send(message)


def _grpc() -> GrpcServer:
    global _server
    if _server is None:
        _server = GrpcServer(max_receive_message_size=4096, compression="gzip")
        _server.add_unary(UNARY, _unary, RawCodec(), RawCodec())
        _server.add_bidi(ECHO, _bidi, RawCodec(), RawCodec())
    return _server


async def _app(stream: Stream, opts: int, bugs: list[BaseException]) -> None:
    try:
        await _grpc()(stream, _PEER)
    except HboneError:
        pass  # the stream broke under the call (reset, connection lost): the server's documented end
    except BaseException as exc:
        if not isinstance(exc, asyncio.CancelledError):
            bugs.append(exc)
        raise


def run(data: bytes) -> None:
    run_app(data, _app)


def _client(calls: list[tuple[str, list[bytes], dict[str, Any]]]) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = 1
    for path, messages, kw in calls:
        conn.send_headers(sid, request_headers(path, "fuzz:80", **kw))
        for m in messages:
            conn.send_data(sid, m)
        conn.send_data(sid, b"", end_stream=True)
        sid += 2
    data = conn.data_to_send()
    return data[len(PREFACE) :]


def seeds() -> dict[str, bytes]:
    msg = encode_message(b"hello")
    gz = encode_message(b"x" * 100, compress=True, encoding="gzip")
    return {
        "unary": pack(b"\xf0", _client([(UNARY, [msg], {"timeout": 1.0})])),
        "bidi": pack(b"\xf0", _client([(ECHO, [msg, msg], {})])),
        "gzip": pack(b"\xf0", _client([(ECHO, [gz], {"encoding": "gzip"})])),
        "health": pack(b"\xf0", _client([("/grpc.health.v1.Health/Check", [encode_message(b"")], {})])),
        "unknown-method": pack(b"\xf0", _client([("/nope.Nope/Nope", [msg], {})])),
        "too-big": pack(b"\xf0", _client([(UNARY, [encode_message(b"y" * 5000)], {})])),
        "two-calls-split": pack(b"\xf0", _client([(UNARY, [msg], {}), (ECHO, [msg], {})]), bytes([5, 40])),
    }


HARNESS = Harness("grpc_server", run, (), seeds, max_len=8192)
