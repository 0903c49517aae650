"""The native engine's HPACK encoder (`hbone.net.h2.native_hpack.Encoder`) against real decoders.

Every block is decoded by `hpack`'s decoder (the one h2 and so the h2 engine use; it also refuses a table that
outgrew the size the peer allows) and by our own, and the peer's dynamic table after each block must equal the
encoder's model of it. The indexing rule is pinned byte by byte: what is indexed, what never is, and the size
updates a changed SETTINGS_HEADER_TABLE_SIZE needs. At the end, whole native engines talk to stock h2
connections, which change their SETTINGS_HEADER_TABLE_SIZE while requests and responses flow.
"""

from __future__ import annotations

import random
import tracemalloc

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple

from hbone.net.h2 import api
from hbone.net.h2.native_conn import NativeEngine
from hbone.net.h2.native_hpack import Encoder
from hbone.net.settings import H2Settings
from tests.unit.hpack_peer import SENSITIVE, Block, Peer

BAGGAGE = b"k8s.namespace.name=default,k8s.pod.name=client-7d4b9c-abcde,service.name=client"


def tunnel(i: int, authority: bytes = b"10.0.0.1:8080") -> Block:
    """ztunnel's CONNECT request: the traceparent is new every time."""
    return [
        (b":method", b"CONNECT"),
        (b":authority", authority),
        (b"traceparent", b"00-%032x-%016x-01" % (i, i)),
        (b"baggage", BAGGAGE),
    ]


def _random_block(rng: random.Random, serial: int) -> Block:
    pool: Block = [
        (b":method", b"CONNECT"),
        (b":method", b"GET"),
        (b":authority", b"10.0.%d.1:8080" % rng.randrange(8)),
        (b":path", b"/pkg.Svc/M%d" % rng.randrange(4)),
        (b"content-type", b"application/grpc"),
        (b"baggage", BAGGAGE),
        (b"traceparent", b"00-%032x-01" % serial),
        (b"grpc-timeout", b"%dm" % rng.randrange(3)),
        (b"x-unique", b"%d" % serial),
        (b"x-big", b"b" * rng.choice([900, 1100, 5000])),
        (b"x-name-%d" % rng.randrange(70), b"v"),
        (rng.choice(SENSITIVE), b"secret-%d" % rng.randrange(3)),
        NeverIndexedHeaderTuple(b"x-api-key", b"k%d" % rng.randrange(2)),
    ]
    return [rng.choice(pool) for _ in range(rng.randrange(0, 9))]


@pytest.mark.parametrize("seed", range(40))
def test_random_blocks_decode_with_hpack_and_ours(seed: int) -> None:
    """Random blocks (repeats, one-offs, big and sensitive fields) with random table size changes between them,
    some lowered and raised again before the next block, some above our own limit."""
    rng = random.Random(seed)
    encoder = Encoder(huffman=rng.random() < 0.3)
    peer = Peer()
    for serial in range(150):
        for _ in range(rng.choice([0] * 12 + [1, 2])):
            peer.allow(rng.choice([0, 1, 64, 100, 300, 1000, 2000, 4096, 8192, 65_536]), encoder)
        peer.check(_random_block(rng, serial), encoder)


def test_connect_request_repeats_as_indexes() -> None:
    """Sent once: literals. Sent again: inserted. From then on one byte each, the traceparent a literal."""
    encoder = Encoder(huffman=False)
    peer = Peer()
    sizes = [len(encoder.encode(tunnel(i))) for i in range(4)]
    assert sizes[:2] == [182, 182]
    third = encoder.encode(tunnel(2))
    traceparent = b"\x00\x0btraceparent\x37" + tunnel(2)[2][1]  # without indexing, its name literal
    # :method 64, :authority 63, baggage 62: the newest entry is 62 (RFC 7541 §2.3.3).
    assert third == bytes([0x80 | 64, 0x80 | 63]) + traceparent + bytes([0x80 | 62])
    assert sizes[2:] == [len(third)] * 2 == [72, 72]
    peer.decode(Encoder(huffman=False).encode(tunnel(0)), Encoder(huffman=False))  # (a fresh pair decodes too)


def test_one_off_fields_are_not_inserted() -> None:
    """1,000 destinations in turn: every :authority is a literal, no insertion evicts the fields that repeat."""
    encoder = Encoder(huffman=False)
    peer = Peer()
    for i in range(1000):
        peer.decode(encoder.encode(tunnel(i, b"10.1.%d.%d:80" % (i // 250, i % 250))), encoder)
    entries, _, _ = encoder.dynamic_table()
    assert entries == [(b"baggage", BAGGAGE), (b":method", b"CONNECT")]


@pytest.mark.parametrize("name", [*SENSITIVE, b"x-api-key"])
def test_sensitive_fields_are_never_indexed(name: bytes) -> None:
    encoder = Encoder(huffman=False)
    peer = Peer()
    for _ in range(5):
        field = (name, b"Bearer abc") if name != b"x-api-key" else NeverIndexedHeaderTuple(name, b"abc")
        got = peer.decode(encoder.encode([field, (b"x-other", b"1")]), encoder)
        assert isinstance(got[0], NeverIndexedHeaderTuple)
    assert encoder.dynamic_table()[0] == [(b"x-other", b"1")]


def test_tracing_ids_and_big_fields_are_not_indexed() -> None:
    encoder = Encoder(huffman=False)
    peer = Peer()
    for _ in range(3):
        peer.decode(encoder.encode([(b"traceparent", b"00-1-2-01"), (b"x-big", b"b" * 1000)]), encoder)
    assert encoder.dynamic_table() == ([], 0, 4096)


def test_lowered_table_size_is_announced_and_evicts() -> None:
    encoder = Encoder(huffman=False)
    peer = Peer()
    for _ in range(2):
        peer.decode(encoder.encode([(b"x-a", b"1" * 40), (b"x-b", b"2" * 40)]), encoder)
    peer.allow(100, encoder)
    assert encoder.dynamic_table() == ([(b"x-b", b"2" * 40)], 75, 100)
    block = encoder.encode([(b"x-b", b"2" * 40)])
    assert block == bytes([0x3F, 100 - 31, 0x80 | 62])  # size update 100 (§6.3), then the entry left
    peer.decode(block, encoder)
    assert encoder.encode([]) == b""  # announced once


def test_lowered_and_raised_again_announces_both() -> None:
    """RFC 7541 §4.2: the smallest size since the last block, then the final one."""
    encoder = Encoder(huffman=False)
    peer = Peer()
    for _ in range(2):
        peer.decode(encoder.encode([(b"x-a", b"1")]), encoder)
    peer.allow(0, encoder)
    peer.allow(4096, encoder)
    block = encoder.encode([(b"x-a", b"1")])
    assert block.startswith(bytes([0x20, 0x3F, 0xE1, 0x1F]))  # 0, then 4096
    peer.decode(block, encoder)
    assert encoder.dynamic_table()[0] == []  # the entry went with size 0: x-a is new again


def test_our_table_stays_within_our_limit_when_the_peer_allows_more() -> None:
    encoder = Encoder(huffman=False)
    peer = Peer()
    peer.allow(1 << 20, encoder)
    assert encoder.encode([]) == b""  # 4096 already: nothing to announce
    for i in range(400):
        peer.decode(encoder.encode([(b"x-%d" % (i // 2), b"v" * 200)]), encoder)
    entries, size, maximum = encoder.dynamic_table()
    assert maximum == 4096 and size <= 4096 and len(entries) == 4096 // 232


def test_table_size_zero_sends_literals_only() -> None:
    encoder = Encoder(huffman=False)
    peer = Peer()
    peer.allow(0, encoder)
    for _ in range(3):
        block = encoder.encode([(b":authority", b"a:1"), (b"x", b"y")])
        peer.decode(block, encoder)
    assert block == b"\x01\x03a:1\x00\x01x\x01y"  # literals without indexing, cached


def _request(rng: random.Random, serial: int) -> Block:
    if rng.random() < 0.5:
        block = tunnel(serial, b"10.0.0.%d:8080" % rng.randrange(6))
    else:
        block = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/pkg.Svc/M%d" % rng.randrange(5)),
            (b":authority", b"svc"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"%dm" % rng.randrange(100)),
        ]
    if rng.random() < 0.2:
        block.append(rng.choice([(b"authorization", b"Bearer t%d" % rng.randrange(2)), (b"cookie", b"s=1")]))
    return block


def _stock(client: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    conn.initiate_connection()
    return conn


@pytest.mark.parametrize("seed", range(6))
def test_native_engines_headers_decode_in_stock_h2(seed: int) -> None:
    """Our client's requests into an h2 server and our server's responses into an h2 client; each h2 side
    changes its SETTINGS_HEADER_TABLE_SIZE now and then (h2 enforces it on its decoder once we ACK)."""
    rng = random.Random(seed)
    client, server = NativeEngine(client=True, settings=H2Settings.client()), _stock(False)
    ours, theirs = NativeEngine(client=False, settings=H2Settings.server()), _stock(True)
    client.start()
    ours.start()
    server.receive_data(bytes(client.take_output()))
    client.receive(memoryview(server.data_to_send()))
    theirs.receive_data(bytes(ours.take_output()))
    ours.receive(memoryview(theirs.data_to_send()))
    size = h2.settings.SettingCodes.HEADER_TABLE_SIZE
    for serial in range(150):
        if rng.random() < 0.1:
            server.update_settings({size: rng.choice([0, 100, 512, 4096, 16_384])})
            theirs.update_settings({size: rng.choice([0, 100, 512, 4096, 16_384])})
        # a request from our client
        client.receive(memoryview(server.data_to_send()))  # (settings, ACKs: ours is queued before the HEADERS)
        request = _request(rng, serial)
        sid = client.open_stream(request, True)
        events = server.receive_data(bytes(client.take_output()))
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert [list(e.headers) for e in received] == [request]
        assert isinstance(received[0].headers[-1], NeverIndexedHeaderTuple) == (request[-1][0] in SENSITIVE)
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        client.receive(memoryview(server.data_to_send()))
        # a response from our server to a request of the h2 client
        ours.receive(memoryview(theirs.data_to_send()))
        theirs_sid = theirs.get_next_available_stream_id()
        theirs.send_headers(theirs_sid, [(b":method", b"CONNECT"), (b":authority", b"a:1")], end_stream=True)
        started = [e for e in ours.receive(memoryview(theirs.data_to_send())) if isinstance(e, api.RequestReceived)]
        assert [e.stream_id for e in started] == [theirs_sid]
        response = [(b":status", rng.choice([b"200", b"503"])), (b"x-envoy-upstream", b"u%d" % rng.randrange(3))]
        ours.send_headers(theirs_sid, response, True)
        events = theirs.receive_data(bytes(ours.take_output()))
        assert [list(e.headers) for e in events if isinstance(e, h2.events.ResponseReceived)] == [response]


def test_encoder_memory_is_bounded_whatever_it_is_given() -> None:
    """What one connection's encoder keeps after 3,000 blocks of ever new fields of every kind (literals it caches,
    fields seen once, big fields, table entries): the table's 4 KiB, 256 small cached encodings and 64 hashes,
    not the fields it was given (the encoder before this bound kept up to 512 fields of any size)."""
    encoder = Encoder(huffman=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):
            serial = b"%06d" % i
            encoder.encode(
                [
                    (b"grpc-timeout", serial + b"m" * 100),  # a literal, cached
                    (b"x-new-" + serial, b"v" * 200),  # indexable, seen once
                    (b"x-big", serial + b"b" * 2000),  # over a quarter of the table
                    (b"x-twice", serial * 30),  # sent twice: a table entry
                    (b"x-twice", serial * 30),
                ]
            )
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 128 * 1024, kept
