"""The HTTP/2 + gRPC capture decoder, fed real bytes from an in-memory h2 client/server pair (no sockets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.errors import GrpcStatus
from hbone.grpc.framing import MessageDecoder, encode_message
from hbone.grpc.h2frames import CLIENT_PREFACE, H2Decoder, dump
from hbone.grpc.metadata import request_headers, response_headers, validate_request_headers
from hbone.grpc.status import Status, parse_trailers, trailers

ROOT = Path(__file__).resolve().parents[2]
REQUEST = status_pb2.Status(code=3, message="ping")
REPLY = status_pb2.Status(code=0, message="pong")


def grpc_exchange(*, encoding: str | None = None, big: int = 0) -> tuple[bytes, bytes]:
    """One unary gRPC-shaped call between two h2 state machines; returns (client->server, server->client)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    c2s, s2c = bytearray(), bytearray()

    def pump() -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        while True:
            out = client.data_to_send()
            if out:
                c2s.extend(out)
                events += server.receive_data(out)
            back = server.data_to_send()
            if back:
                s2c.extend(back)
                client.receive_data(back)
            if not out and not back:
                return events

    client.initiate_connection()
    server.initiate_connection()
    pump()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, request_headers("/pkg.Echo/Say", "svc:50051", timeout=5, encoding=encoding,
                                             metadata=[("x-trace", "abc"), ("k-bin", b"\x00\xff")]))  # fmt: skip
    body = encode_message(REQUEST.SerializeToString(), compress=encoding is not None, encoding=encoding)
    if big:
        body += encode_message(b"\xab" * big)
    # Split the request across two DATA frames to exercise reassembly.
    client.send_data(sid, body[:3])
    for i in range(3, len(body), 16_384):
        client.send_data(sid, body[i : i + 16_384], end_stream=i + 16_384 >= len(body))
    events = pump()
    req_headers = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    info = validate_request_headers(req_headers.headers)
    dec = MessageDecoder(encoding=info.encoding)
    msgs = [m for e in events if isinstance(e, h2.events.DataReceived) for m in dec.feed(e.data)]
    assert status_pb2.Status.FromString(msgs[0]) == REQUEST
    server.send_headers(sid, response_headers(encoding, [("x-served-by", "test")]))
    server.send_data(sid, encode_message(REPLY.SerializeToString(), compress=True, encoding=encoding))
    server.send_headers(sid, trailers(Status(GrpcStatus.OK, "all good \u2713")), end_stream=True)
    pump()
    return bytes(c2s), bytes(s2c)


def test_client_side_capture() -> None:
    c2s, _ = grpc_exchange()
    assert c2s.startswith(CLIENT_PREFACE)
    text = "\n".join(dump(c2s))
    assert "PREFACE client connection preface" in text
    assert "SETTINGS stream=0" in text
    assert "HEADERS stream=1 flags=END_HEADERS" in text
    assert "    :path: /pkg.Echo/Say" in text and "    grpc-timeout: 5S" in text and "    k-bin: AP8" in text
    payload = REQUEST.SerializeToString()
    assert f"grpc message #1: {len(payload)} bytes {payload.hex()}" in text
    assert "ERROR" not in text


def test_server_side_capture_with_proto_and_trailers() -> None:
    _, s2c = grpc_exchange()
    lines = dump(s2c, server=True, message_class=status_pb2.Status)
    text = "\n".join(lines)
    assert "PREFACE" not in text and "NOTE" not in text
    assert "    :status: 200" in text and "    x-served-by: test" in text
    assert '      = message: "pong"' in text
    assert "flags=END_HEADERS|END_STREAM" in text
    assert "! gRPC status OK: all good \u2713" in text


def test_gzip_stream_is_decompressed() -> None:
    c2s, s2c = grpc_exchange(encoding="gzip")
    assert '= code: 3 message: "ping"' in "\n".join(dump(c2s, message_class=status_pb2.Status))
    assert '= message: "pong"' in "\n".join(dump(s2c, server=True, message_class=status_pb2.Status))


def test_long_message_is_truncated_in_hex_and_spans_frames() -> None:
    c2s, _ = grpc_exchange(big=40_000)  # larger than the 16 KiB default frame: several DATA frames
    text = "\n".join(dump(c2s, hex_limit=8))
    assert "grpc message #2: 40000 bytes abababababababab...(+39992 bytes)" in text
    assert text.count("DATA stream=1") >= 3


def test_incremental_feed_matches_whole() -> None:
    c2s, _ = grpc_exchange()
    whole = H2Decoder()
    expected = whole.feed(c2s) + whole.close()
    dec = H2Decoder()
    got = [r for i in range(0, len(c2s), 7) for r in dec.feed(c2s[i : i + 7])] + dec.close()
    assert got == expected


def test_missing_preface_is_noted_and_decoding_continues() -> None:
    _, s2c = grpc_exchange()
    lines = dump(s2c)  # forgot --server
    assert lines[0].startswith("@0        NOTE no client preface")
    assert any("SETTINGS" in line for line in lines)


def test_truncated_capture_reports_where() -> None:
    c2s, _ = grpc_exchange()
    lines = dump(c2s[:-4])
    assert any("ERROR capture ends inside a frame" in line for line in lines)


def test_garbage_frame_stops_with_offset() -> None:
    # A SETTINGS frame whose length is not a multiple of 6 is undecodable.
    bad = (
        CLIENT_PREFACE + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x01" * 5 + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    )
    lines = dump(bad)
    assert lines[-1].startswith("@24       ERROR decoding failed at offset 24")
    assert len(lines) == 2  # the preface and the error; nothing after it


def test_bad_hpack_block_is_reported() -> None:
    frame = b"\x00\x00\x02\x01\x05\x00\x00\x00\x01" + b"\xff\xff"  # HEADERS, END_STREAM|END_HEADERS, bad index
    assert "ERROR decoding failed at offset 0" in dump(frame, server=True)[-1]


def test_grpc_framing_error_is_a_note_not_a_stop() -> None:
    c2s, _ = grpc_exchange()
    dec = H2Decoder()
    recs = dec.feed(c2s)
    # A DATA frame on stream 1 carrying a bad compressed flag, then a PING: the PING is still decoded.
    extra = b"\x00\x00\x05\x00\x00\x00\x00\x00\x01" + b"\x07\x00\x00\x00\x00"
    extra += b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    recs = dec.feed(extra)
    assert "invalid compressed flag" in recs[0].notes[0]
    assert recs[1].kind == "PING"


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_never_raises(data: bytes, server: bool) -> None:
    dump(data, server=server)
    dump(CLIENT_PREFACE + data)


def test_trailers_parse_back_from_capture() -> None:
    # The same bytes, read by a second h2 client, give back the status we sent (cross-check of trailers()).
    _, s2c = grpc_exchange()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.get_next_available_stream_id()
    client.send_headers(1, request_headers("/pkg.Echo/Say", "svc"), end_stream=True)
    events = client.receive_data(s2c)
    trailer_event = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    status, _ = parse_trailers(trailer_event.headers)
    assert status == Status(GrpcStatus.OK, "all good \u2713")


@pytest.mark.parametrize("server_flag", [False, True])
def test_h2dump_cli(tmp_path: Path, server_flag: bool) -> None:
    c2s, s2c = grpc_exchange()
    path = tmp_path / "capture.bin"
    path.write_bytes(s2c if server_flag else c2s)
    args = [sys.executable, str(ROOT / "tools" / "h2dump.py"), str(path), "--proto", "google.rpc.status_pb2.Status"]
    if server_flag:
        args.append("--server")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert ('message: "pong"' if server_flag else 'message: "ping"') in out


def test_h2dump_cli_bad_input_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(CLIENT_PREFACE + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x01" * 5)
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "h2dump.py"), str(path)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 1 and "decoding failed" in res.stdout
