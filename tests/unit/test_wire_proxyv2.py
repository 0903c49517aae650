"""hbone.wire.proxyv2: PROXY protocol v2 writer and reader."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import ConfigError, IdentityError, LimitExceeded, ProtocolError
from hbone.identity.spiffe import SpiffeId
from hbone.wire.authority import Authority
from hbone.wire.proxyv2 import (
    SIGNATURE,
    TLV_NOOP,
    Command,
    ProxyHeader,
    ProxyProtocolError,
    ProxyV2Reader,
    local_header,
    proxy_header,
)

ID = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/sleep")


def test_ztunnel_style_ipv4() -> None:
    wire = proxy_header(Authority.parse("10.0.0.1:40000"), ("10.0.0.2", 8080), client_identity=ID)
    assert wire[:12] == SIGNATURE and wire[12] == 0x21 and wire[13] == 0x11
    assert struct.unpack("!H", wire[14:16])[0] == 12 + 3 + len(str(ID))
    reader = ProxyV2Reader()
    header = reader.feed(wire + b"GET / HTTP/1.1\r\n")
    assert header is not None
    assert header.command is Command.PROXY
    assert header.source == (ipaddress.IPv4Address("10.0.0.1"), 40000)
    assert header.destination == (ipaddress.IPv4Address("10.0.0.2"), 8080)
    assert header.client_identity == str(ID) and header.spiffe_id == ID
    assert header.service_hostname is None
    assert reader.leftover == b"GET / HTTP/1.1\r\n"
    assert reader.feed(b"x") is None and reader.take_leftover() == b"GET / HTTP/1.1\r\nx"
    assert reader.header is header


def test_ipv6_service_hostname_and_extra_tlvs() -> None:
    wire = proxy_header(
        ("2001:db8::1", 1),
        (ipaddress.IPv6Address("2001:db8::2"), 65535),
        service_hostname="echo.ns.svc.cluster.local",
        tlvs=[(TLV_NOOP, b"\x00\x00"), (0x05, b"uid")],
    )
    header = ProxyV2Reader().feed(wire)
    assert header is not None and wire[13] == 0x21
    assert header.source == (ipaddress.IPv6Address("2001:db8::1"), 1)
    assert header.service_hostname == "echo.ns.svc.cluster.local"
    assert header.tlvs == ((0xD1, b"echo.ns.svc.cluster.local"), (0x05, b"uid"))  # NOOP dropped
    assert header.client_identity is None and header.spiffe_id is None


def test_local() -> None:
    wire = local_header()
    assert wire == SIGNATURE + b"\x20\x00\x00\x00"
    assert ProxyV2Reader().feed(wire) == ProxyHeader(Command.LOCAL)
    # LOCAL discards the block, whatever family it names (§2.2).
    assert ProxyV2Reader().feed(SIGNATURE + b"\x20\x31\x00\x02ab") == ProxyHeader(Command.LOCAL)


def test_unspec_proxy() -> None:
    header = ProxyV2Reader().feed(SIGNATURE + b"\x21\x00\x00\x00")
    assert header == ProxyHeader(Command.PROXY, None, None, ())


def test_split_at_every_boundary() -> None:
    wire = proxy_header(("10.1.1.1", 5), ("10.2.2.2", 6), client_identity=ID) + b"tail"
    for cut in range(len(wire) + 1):
        reader = ProxyV2Reader()
        first, second = reader.feed(wire[:cut]), reader.feed(wire[cut:])
        header = first or second
        assert header is not None and header.spiffe_id == ID, cut
        assert reader.take_leftover() == b"tail"


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
         "byte 0 is 0x50, expected 0x0d of the PROXY v2 signature; PROXY protocol v1 (text)"),
        (b"\r\n\r\n\x00\r\nQUIX", "byte 10 is 0x58, expected 0x54"),
        (SIGNATURE + b"\x11", "version 1, expected 2"),
        (SIGNATURE + b"\x22", "command 0x2"),
        (SIGNATURE + b"\x21\x12", "UDP over IPv4 is not supported"),
        (SIGNATURE + b"\x21\x31", "UNIX stream is not supported"),
        (SIGNATURE + b"\x21\x10", "family 0x10: not a family/transport defined"),
        (SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8, "length 8 is shorter than the 12-byte TCP over IPv4"),
        (SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12, "shorter than the 36-byte TCP over IPv6"),
        (SIGNATURE + b"\x21\x11\x00\x0e" + b"\x00" * 14, "TLV at body offset 12 is truncated"),
        (SIGNATURE + b"\x21\x11\x00\x0f" + b"\x00" * 12 + b"\xd0\x00\x05", "claims 5 bytes; only 0 remain"),
        (SIGNATURE + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\xd0\x00\x01\xff",
         "TLV 0xd0 at body offset 12 is not UTF-8"),
    ],
)  # fmt: skip
def test_rejects(wire: bytes, fragment: str) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        ProxyV2Reader().feed(wire)
    assert fragment in str(info.value)


def test_early_rejection_byte_by_byte() -> None:
    reader = ProxyV2Reader()
    for b in SIGNATURE[:5]:
        assert reader.feed(bytes([b])) is None
    with pytest.raises(ProxyProtocolError, match="byte 5"):
        reader.feed(b"Z")


def test_limits_and_config() -> None:
    wire = proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(0x05, b"x" * 5000)])
    with pytest.raises(LimitExceeded, match="limit is 4096"):
        ProxyV2Reader().feed(wire[:16])
    assert ProxyV2Reader(max_length=16 + 65535).feed(wire) is not None
    with pytest.raises(ConfigError):
        ProxyV2Reader(max_length=15)


def test_writer_rejects() -> None:
    with pytest.raises(ProxyProtocolError, match="different address families"):
        proxy_header(("10.0.0.1", 1), ("::1", 2))
    with pytest.raises(ProxyProtocolError, match="needs an IP address"):
        proxy_header(Authority.parse("svc.ns:80"), ("10.0.0.1", 2))
    with pytest.raises(ProxyProtocolError, match="out of range"):
        proxy_header(("10.0.0.1", 70000), ("10.0.0.2", 2))
    with pytest.raises(ProxyProtocolError, match="does not fit"):
        proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(256, b"")])
    with pytest.raises(ProxyProtocolError, match="maximum is 65535"):
        proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), tlvs=[(5, b"x" * 65000), (6, b"y" * 1000)])
    with pytest.raises(ProxyProtocolError, match="needs both"):
        ProxyHeader(Command.PROXY).encode()


def test_bad_spiffe_tlv_is_identity_error() -> None:
    header = ProxyV2Reader().feed(proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), client_identity="not-spiffe"))
    assert header is not None and header.client_identity == "not-spiffe"
    with pytest.raises(IdentityError):
        _ = header.spiffe_id


_tlv = st.tuples(st.integers(0, 255).filter(lambda t: t not in (0x02, 0x04, 0xD0, 0xD1)), st.binary(max_size=30))


@given(
    st.one_of(
        st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
        st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
    ),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(_tlv, max_size=4),
    st.one_of(st.none(), st.text(max_size=40)),
    st.data(),
)
def test_roundtrip(
    ips: tuple[object, object],
    sport: int,
    dport: int,
    tlvs: list[tuple[int, bytes]],
    identity: str | None,
    data: st.DataObject,
) -> None:
    src, dst = ips
    wire = proxy_header((src, sport), (dst, dport), client_identity=identity, tlvs=tlvs)  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(wire)))
    reader = ProxyV2Reader()
    first, second = reader.feed(wire[:cut]), reader.feed(wire[cut:])
    header = first or second
    assert header is not None
    assert header.source == (src, sport) and header.destination == (dst, dport)
    assert header.client_identity == identity
    expected = ([(0xD0, identity.encode())] if identity is not None else []) + tlvs
    assert list(header.tlvs) == expected
    assert header.encode() == wire


@given(st.binary(max_size=80))
def test_fuzz_arbitrary(data: bytes) -> None:
    try:
        ProxyV2Reader().feed(data)
    except ProtocolError:
        pass


@given(st.binary(max_size=80))
def test_fuzz_after_signature(data: bytes) -> None:
    reader = ProxyV2Reader(max_length=64)
    try:
        reader.feed(SIGNATURE)
        reader.feed(data)
    except ProtocolError:
        pass
