"""hbone.wire.clienthello: ClientHello reassembly and SNI/ALPN extraction, against real OpenSSL hellos."""

from __future__ import annotations

import functools
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.errors import ConfigError, LimitExceeded, ProtocolError
from hbone.wire.clienthello import (
    ClientHelloError,
    ClientHelloReader,
    IstioSni,
    parse_client_hello_body,
    parse_istio_sni,
    sni_target,
)

ISTIO_SNI = "outbound_.8443_._.echo.ns.svc.cluster.local"


@functools.cache
def real_hello(
    server_hostname: str | None = ISTIO_SNI,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> bytes:
    """The first flight OpenSSL sends, taken from a MemoryBIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    return outgoing.read()


def handshake_of(records: bytes) -> bytes:
    """Concatenate the fragments of a sequence of records."""
    out, pos = b"", 0
    while pos < len(records):
        (length,) = struct.unpack_from("!H", records, pos + 3)
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def to_records(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """Re-fragment a handshake message into records of the given sizes (the last takes the rest)."""
    out, pos = b"", 0
    for size in [*sizes, len(handshake)]:
        chunk = handshake[pos : pos + max(size, 1)]
        if not chunk:
            break
        out += b"\x16" + version + struct.pack("!H", len(chunk)) + chunk
        pos += len(chunk)
    return out


def hello_msg(extensions: list[tuple[int, bytes]] | None, *, suites: bytes = b"\x13\x01", tail: bytes = b"") -> bytes:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if extensions is not None:
        block = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(block)) + block
    body += tail
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_ext(*names: tuple[int, bytes]) -> tuple[int, bytes]:
    entries = b"".join(bytes([t]) + struct.pack("!H", len(n)) + n for t, n in names)
    return 0, struct.pack("!H", len(entries)) + entries


def test_real_hello() -> None:
    wire = real_hello()
    reader = ClientHelloReader()
    hello = reader.feed(wire + b"\x17early")
    assert hello is not None
    assert hello.server_name == ISTIO_SNI
    assert hello.alpn == ("h2", "http/1.1")
    assert 0x0304 in hello.supported_versions and hello.offers_tls13
    assert hello.legacy_version == 0x0303
    assert hello.raw == wire
    assert reader.leftover == b"\x17early"
    assert reader.data == wire + b"\x17early"
    assert 0 in hello.extensions and 16 in hello.extensions and len(hello.cipher_suites) > 3
    assert reader.feed(b"more") is None and reader.leftover == b"\x17earlymore"


def test_real_hello_without_sni_alpn_and_tls12_only() -> None:
    hello = ClientHelloReader().feed(real_hello(None, ()))
    assert hello is not None and hello.server_name is None and hello.alpn == ()
    hello = ClientHelloReader().feed(real_hello("a.example", ("h2",), ssl.TLSVersion.TLSv1_2))
    assert hello is not None and hello.server_name == "a.example" and not hello.offers_tls13


def test_split_at_every_byte_boundary() -> None:
    wire = real_hello()
    for cut in range(len(wire) + 1):
        reader = ClientHelloReader()
        first = reader.feed(wire[:cut])
        second = reader.feed(wire[cut:])
        hello = first or second
        assert hello is not None and hello.raw == wire, cut
        assert (first is None) == (cut < len(wire))


def test_byte_at_a_time() -> None:
    wire = real_hello()
    reader = ClientHelloReader()
    results = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert results[-1] is not None and all(r is None for r in results[:-1])


@given(st.lists(st.integers(1, 200), max_size=8), st.data())
def test_multiple_records_any_segmentation(sizes: list[int], data: st.DataObject) -> None:
    wire = to_records(handshake_of(real_hello()), sizes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    reader = ClientHelloReader()
    results = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        results.append(reader.feed(wire[start:end]))
    hello = next(r for r in results if r is not None)
    assert hello.server_name == ISTIO_SNI and hello.raw == wire


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (b"GET / HTTP/1.1\r\n", "content type 71 (0x47), expected handshake (22)"),
        (b"\x80\x2e\x01\x03\x01", "SSLv2-compatible"),
        (b"\x17\x03\x03\x00\x05hello", "content type 23"),
        (b"\x16\x02\x00", "legacy_record_version 0x0200"),
        (b"\x16\x03\x05", "legacy_record_version 0x0305"),
        (b"\x16\x03\x01\x00\x00", "empty handshake fragment"),
        (b"\x16\x03\x01\x40\x01", "2^14"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "handshake message type 2, expected client_hello"),
        (to_records(hello_msg([]) + b"\x14\x00\x00\x00", []), "4 bytes of another handshake message"),
        (to_records(hello_msg([], suites=b"\x13\x01\x13"), []), "cipher_suites length 3 is odd"),
        (to_records(hello_msg([], suites=b""), []), "cipher_suites length 0 is outside 2..65534"),
        (to_records(hello_msg([], tail=b"\x00"), []), "1 bytes after the extensions block"),
        (to_records(hello_msg([(0, b"\x00")]), []), "truncated in server_name list length"),
        (to_records(hello_msg([(5, b""), (5, b"")]), []), "extension 5 appears twice"),
        (to_records(hello_msg([sni_ext((0, b"a.b"), (0, b"c.d"))]), []), "two host_name entries"),
        (to_records(hello_msg([sni_ext((0, b"a.b."))]), []), "must not end with '.'"),
        (to_records(hello_msg([sni_ext((0, b"a\x00b"))]), []), "characters outside"),
        (to_records(hello_msg([sni_ext((0, b""))]), []), "host_name length 0"),
        (to_records(hello_msg([(0, sni_ext((0, b"a.b"))[1] + b"x")]), []), "1 bytes after its list"),
        (to_records(hello_msg([(16, b"\x00\x03\x05h2")]), []), "truncated in ALPN protocol name"),
        (to_records(hello_msg([(16, b"\x00\x01\x00")]), []), "protocol_name_list length 1"),
        (to_records(hello_msg([(43, b"\x03\x03\x04\x03")]), []), "supported_versions extension is malformed"),
        (to_records(hello_msg([(43, b"\x00")]), []), "supported_versions length 0"),
    ],
)
def test_rejects(wire: bytes, fragment: str) -> None:
    with pytest.raises(ClientHelloError) as info:
        ClientHelloReader().feed(wire)
    assert fragment in str(info.value)


def test_truncated_extension_block() -> None:
    msg = bytearray(hello_msg([sni_ext((0, b"a.b"))]))
    msg[-14:-12] = struct.pack("!H", 200)  # extensions length claims more than the body holds
    with pytest.raises(ClientHelloError, match="truncated in extensions"):
        ClientHelloReader().feed(to_records(bytes(msg), []))


def test_synthetic_hello_and_skipped_name_types() -> None:
    msg = hello_msg([sni_ext((7, b"\xff"), (0, b"Svc.Example")), (16, b"\x00\x03\x02h2"), (43, b"\x02\x03\x04")])
    hello = ClientHelloReader().feed(to_records(msg, [3, 1, 10]))
    assert hello is not None and hello.server_name == "svc.example" and hello.alpn == ("h2",)
    assert hello.supported_versions == (0x0304,)
    no_ext = parse_client_hello_body(hello_msg(None)[4:])
    assert no_ext.extensions == () and no_ext.cipher_suites == (0x1301,)


def test_size_limit() -> None:
    wire = to_records(hello_msg([(21, b"\x00" * 20000)]), [16000])
    with pytest.raises(LimitExceeded, match="limit is 16384"):
        ClientHelloReader().feed(wire)
    hello = ClientHelloReader(max_size=64 * 1024).feed(wire)
    assert hello is not None and hello.raw == wire
    with pytest.raises(ConfigError):
        ClientHelloReader(max_size=64 * 1024 + 1)


@given(st.binary(max_size=300))
def test_fuzz_arbitrary(data: bytes) -> None:
    try:
        ClientHelloReader(max_size=256).feed(data)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_real_hello(data: st.DataObject) -> None:
    wire = bytearray(real_hello())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    reader = ClientHelloReader()
    try:
        reader.feed(bytes(wire[:cut]))
        reader.feed(bytes(wire[cut:]))
    except ProtocolError:
        pass


# --- Istio SNI ----------------------------------------------------------------------------------------------------


def test_istio_sni() -> None:
    parsed = parse_istio_sni(ISTIO_SNI)
    assert parsed == IstioSni("echo.ns.svc.cluster.local", 8443, "", "outbound")
    assert str(parsed) == ISTIO_SNI
    assert str(sni_target(ISTIO_SNI)) == "echo.ns.svc.cluster.local:8443"
    v1 = parse_istio_sni("outbound_.80_.v1_.reviews.default.svc.cluster.local")
    assert v1 is not None and v1.subset == "v1" and v1.port == 80
    assert parse_istio_sni("inbound_.9080_._.x.y") == IstioSni("x.y", 9080, "", "inbound")
    assert parse_istio_sni("echo.ns.svc.cluster.local") is None
    assert str(sni_target("echo.ns.svc.cluster.local")) == "echo.ns.svc.cluster.local:443"
    assert str(sni_target("echo.ns", default_port=15443)) == "echo.ns:15443"


@pytest.mark.parametrize(
    ("sni", "fragment"),
    [
        ("outbound_.8443._.echo.ns", "port field '8443' must be digits followed by '_'"),
        ("outbound_.x_._.echo.ns", "port field"),
        ("outbound_.0_._.echo.ns", "out of range"),
        ("outbound_.70000_._.echo.ns", "out of range"),
        ("outbound_.80_.v1.echo.ns", "subset field 'v1' must end with '_'"),
        ("outbound_.80_._.bad_host", "label 'bad_host'"),
    ],
)
def test_istio_sni_invalid(sni: str, fragment: str) -> None:
    with pytest.raises(ClientHelloError) as info:
        parse_istio_sni(sni)
    assert fragment in str(info.value)


@given(
    st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{1,6}){0,4}", fullmatch=True),
    st.integers(1, 65535),
    st.from_regex(r"([a-z0-9]{1,8})?", fullmatch=True),
)
def test_istio_sni_roundtrip(host: str, port: int, subset: str) -> None:
    sni = IstioSni(host, port, subset)
    assert parse_istio_sni(str(sni)) == sni


@given(st.text(alphabet="outbnd_.0123456789abc-", max_size=40))
def test_istio_sni_fuzz(text: str) -> None:
    try:
        sni_target(text)
    except ProtocolError:
        pass
