"""The native HTTP/2 engine against the h2-backed engine as the oracle (tests/unit/h2_twin.py): the same bytes
and commands must give the same events, errors and GOAWAY codes, output bytes, windows and stream states."""

from __future__ import annotations

import random

import pytest

from tests.unit.h2_twin import GRPC_REQUEST, REQUEST, RESPONSE, PeerFrames, Twin, frame, started

HEAD_REQUEST = [(b":method", b"HEAD"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]
BIG_REQUEST = [*REQUEST, (b"x-big", b"b" * 20_000)]  # over a 16 KiB frame: HEADERS + CONTINUATION
BIG_RESPONSE = [*RESPONSE, (b"x-big", b"b" * 20_000)]


def _op(twin: Twin, name: str, *args: object) -> None:
    twin.log.append(f"{name}{tuple(f'<{len(a[0])} bytes>' if isinstance(a, list) else a for a in args)}")
    twin.both(lambda e: getattr(e, name)(*args))


def _server() -> tuple[Twin, PeerFrames]:
    return started(False, random.Random(0))


def _client() -> tuple[Twin, PeerFrames]:
    return started(True, random.Random(0))


def test_tunnel_lifecycle_server() -> None:
    twin, peer = _server()
    twin.receive(frame(1, 0x4, 1, peer.encoder.encode(REQUEST)))
    twin.both(lambda e: e.send_headers(1, RESPONSE, False))
    twin.receive(frame(0, 0, 1, b"x" * 1000) + frame(0, 0, 1, b"y" * 10))
    twin.both(lambda e: e.credit(1, 1010))
    twin.both(lambda e: e.send_data(1, [b"abc", memoryview(b"def")], 6))
    twin.receive(frame(0, 1, 1, b""))
    twin.both(lambda e: e.end_stream(1))
    twin.both(lambda e: e.send_data(1, [b"a"], 1))  # closed: StreamClosed on both


def test_tunnel_lifecycle_client() -> None:
    twin, peer = _client()
    assert twin.both(lambda e: e.open_stream(REQUEST, False)) == ("ok", 1)
    twin.receive(frame(1, 0x4, 1, peer.encoder.encode(RESPONSE)))
    twin.both(lambda e: e.send_data(1, [b"hello"], 5))
    twin.receive(frame(0, 0, 1, b"world") + frame(3, 0, 1, (8).to_bytes(4, "big")))
    twin.both(lambda e: e.reset_stream(1, 8))
    twin.both(lambda e: e.open_stream(GRPC_REQUEST, True))


def test_windows_and_credit() -> None:
    twin, peer = _server()
    twin.receive(frame(1, 0x4, 1, peer.encoder.encode(REQUEST)))
    for _ in range(80):
        twin.receive(frame(0, 0, 1, bytes(16_384)))
        twin.both(lambda e: e.credit(1, 16_384))
    twin.receive(frame(8, 0, 1, (2**31 - 1).to_bytes(4, "big")))  # stream window overflow: stream error
    twin.receive(frame(0, 0, 1, b"late"))  # DATA on the reset stream: RST_STREAM(STREAM_CLOSED)


def test_settings_change_windows() -> None:
    twin, _ = _client()
    twin.both(lambda e: e.open_stream(REQUEST, False))
    twin.receive(frame(4, 0, 0, (4).to_bytes(2, "big") + (1000).to_bytes(4, "big")))
    twin.receive(frame(4, 0, 0, (5).to_bytes(2, "big") + (20_000).to_bytes(4, "big")))
    twin.both(lambda e: e.send_data(1, [bytes(2000)], 2000))  # over the stream window now


@pytest.mark.parametrize(
    "data",
    [
        frame(0, 0, 1, b"x"),  # DATA before any HEADERS
        frame(1, 0x4, 2, b"\x82"),  # a stream id of the server's parity
        frame(9, 0x4, 1, b"\x82"),  # CONTINUATION without HEADERS
        frame(6, 0, 0, bytes(7)),  # PING of 7 bytes
        frame(4, 1, 0, bytes(6)),  # SETTINGS ACK with a body
        frame(8, 0, 0, bytes(4)),  # WINDOW_UPDATE of 0
        frame(5, 0x4, 1, bytes(4)),  # PUSH_PROMISE to a server
        frame(0, 0, 0, b"x"),  # DATA on stream 0
        frame(4, 0, 1, b""),  # SETTINGS on a stream
        frame(1, 0x4, 1, b"\xff\xff"),  # a broken HPACK block
        frame(0x1, 0x0, 1, b"\x82") + frame(0, 0, 1, b"x"),  # DATA inside a header block
        b"\x00\x00",  # half a frame header
    ],
)
def test_scripted_errors(data: bytes) -> None:
    twin, _ = _server()
    twin.receive(data)


@pytest.mark.parametrize("seed", range(400))
@pytest.mark.parametrize("client", [False, True])
def test_random_sequences(seed: int, client: bool) -> None:
    rng = random.Random(seed * 2 + client)
    twin, peer = started(client, rng)
    for _ in range(40):
        if twin.failed:
            break
        r = rng.random()
        if r < 0.55:
            data = peer.frames(rng.randrange(1, 5))
            splits = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(4))]
            twin.receive(data, splits)
        elif r < 0.65 and client:
            request, end = rng.choice([REQUEST, GRPC_REQUEST, HEAD_REQUEST, BIG_REQUEST]), rng.random() < 0.2
            _op(twin, "open_stream", request, end)
        elif twin.sids:  # the driver only commands streams it was told about (opened, or reported by an event)
            sid = rng.choice(sorted(twin.sids))
            op = rng.choice(["headers", "data", "end", "reset", "credit", "ping", "goaway"])
            size = rng.choice([0, 1, 1000, 16_384, 70_000])
            end = rng.random() < 0.3
            block = rng.choice([RESPONSE, BIG_RESPONSE]) if not client else [(b"grpc-status", b"0")]
            if op == "headers":
                _op(twin, "send_headers", sid, block, end)
            elif op == "data":
                _op(twin, "send_data", sid, [bytes(size)], size)
            elif op == "end":
                _op(twin, "end_stream", sid)
            elif op == "reset":
                _op(twin, "reset_stream", sid, 8)
            elif op == "credit":
                _op(twin, "credit", sid, size)
            elif op == "ping":
                _op(twin, "ping", b"12345678")
            else:
                _op(twin, "goaway", 0)


def test_push_promise_is_refused_once_its_block_is_complete() -> None:
    """Found by the fuzzer: a PUSH_PROMISE without END_HEADERS opens a header block like HEADERS does."""
    twin, _ = _client()
    twin.both(lambda e: e.open_stream(REQUEST, False))
    assert twin.receive(frame(5, 0, 1, (2).to_bytes(4, "big") + b"\x88"))[0] == "ok"
    assert twin.receive(frame(9, 0x4, 1, b"\x88")) == ("ProtocolError", 1)
