"""`hbone grpc decode`: a captured HTTP/2 byte stream (either direction) decoded into frames, headers and gRPC
messages for display. The decoder reports a foreign library's error on hostile bytes as an ERROR record and stops;
here a record naming one of Python's own bug exceptions (IndexError, KeyError, ...) counts as a crash too."""

from __future__ import annotations

import h2.connection
from envoy.service.discovery.v3 import discovery_pb2

from hbone.errors import HboneError
from hbone.grpc.framing import encode_message
from hbone.grpc.h2frames import H2Decoder, format_record
from hbone.grpc.metadata import request_headers
from tests.fuzz.harness import Bytes, Harness, chunks, pack

_BUGS = ("IndexError", "KeyError", "AttributeError", "TypeError", "RecursionError", "UnicodeDecodeError",
         "AssertionError", "ZeroDivisionError", "NameError", "UnboundLocalError")  # fmt: skip


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    decoder = H2Decoder(
        server=bool(opts & 1),
        message_class=discovery_pb2.DiscoveryRequest if opts & 2 else None,
        max_message_size=64 << (opts >> 4),
    )
    records = []
    for piece in chunks(b.rest(), sizes):
        records += decoder.feed(piece)
    records += decoder.close()
    for rec in records:
        text = "\n".join(format_record(rec))
        if rec.kind == "ERROR":
            assert not any(f"{name}(" in text for name in _BUGS), text


def _capture() -> bytes:
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    conn.send_headers(1, request_headers(path, "xds:15010", timeout=5))
    req = discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    conn.send_data(1, encode_message(req.SerializeToString()) * 2)
    conn.send_data(1, encode_message(b"\xff\xff", compress=True, encoding="gzip"), end_stream=True)
    return conn.data_to_send()


def seeds() -> dict[str, bytes]:
    capture = _capture()
    return {
        "xds-request": pack(b"\x12", capture),
        "split": pack(b"\x12", capture, bytes([3, 50, 7])),
        "raw-messages": pack(b"\x10", capture),
        "server-side": pack(b"\x11", capture[24:]),
        "truncated": pack(b"\x12", capture[:-10]),
    }


HARNESS = Harness("grpc_capture", run, (HboneError,), seeds, max_len=8192)
