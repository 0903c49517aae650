"""hbone.wire.authority: HBONE target parsing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import BadRequest, ProtocolError
from hbone.wire.authority import Authority, InvalidAuthority, check_hostname, parse_authority


@pytest.mark.parametrize(
    ("text", "host", "port", "canonical"),
    [
        ("10.0.0.1:8080", "10.0.0.1", 8080, "10.0.0.1:8080"),
        ("[2001:db8::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
        ("[2001:DB8:0:0::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
        ("[::ffff:1.2.3.4]:1", "::ffff:102:304", 1, "[::ffff:102:304]:1"),
        ("echo.ns.svc.cluster.local:65535", "echo.ns.svc.cluster.local", 65535, "echo.ns.svc.cluster.local:65535"),
        ("Echo.NS.svc:80", "echo.ns.svc", 80, "echo.ns.svc:80"),
        ("localhost:15008", "localhost", 15008, "localhost:15008"),
        ("3com.example:22", "3com.example", 22, "3com.example:22"),
    ],
)
def test_valid(text: str, host: str, port: int, canonical: str) -> None:
    a = parse_authority(text)
    assert (a.host, a.port, str(a)) == (host, port, canonical)
    assert a == Authority.parse(canonical)


def test_ip_field() -> None:
    assert parse_authority("1.2.3.4:5").ip == ipaddress.IPv4Address("1.2.3.4")
    assert parse_authority("[::1]:5").ip == ipaddress.IPv6Address("::1")
    assert parse_authority("a.b:5").ip is None
    assert not parse_authority("a.b:5").is_ip


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("10.0.0.1", "no port"),
        ("10.0.0.1:", "empty port"),
        ("10.0.0.1:0", "out of range"),
        ("10.0.0.1:65536", "out of range"),
        ("10.0.0.1:123456", "1 to 5 decimal digits"),
        ("10.0.0.1:080", "leading zero"),
        ("10.0.0.1:+80", "decimal digits"),
        ("10.0.0.1:8a", "decimal digits"),
        (":80", "empty host"),
        ("::1:80", "must be in brackets"),
        ("[::1]", "no port"),
        ("[::1:80", "without a closing"),
        ("::1]:80", "without an opening"),
        ("[]:80", "empty host between brackets"),
        ("[::1]80", "expected ':' after ']'"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("[fe80::1%eth0]:80", "zone identifiers"),
        ("a b:80", "forbidden character ' ' at index 1"),
        ("a\x00b:80", "forbidden character"),
        ("héllo:80", "forbidden character"),
        ("user@host:80", "userinfo"),
        ("-bad.example:80", "label '-bad'"),
        ("bad-.example:80", "label 'bad-'"),
        ("a..b:80", "empty label at position 1"),
        ("a.b.:80", "must not end with '.'"),
        ("under_score.example:80", "label 'under_score'"),
        ("1.2.3:80", "numeric last label"),
        ("010.0.0.1:80", "numeric last label"),
        ("a" * 64 + ".com:80", "longer than 63"),
    ],
)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidAuthority) as info:
        parse_authority(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, BadRequest)
    assert info.value.http_status == 400


def test_hostname_too_long() -> None:
    host = ".".join(["a" * 60] * 5)
    with pytest.raises(InvalidAuthority, match="maximum"):
        check_hostname(host)


def test_from_parts() -> None:
    assert str(Authority.from_parts("::1", 80)) == "[::1]:80"
    assert str(Authority.from_parts(ipaddress.ip_address("10.1.1.1"), 1)) == "10.1.1.1:1"
    assert str(Authority.from_parts("Svc.NS", 9)) == "svc.ns:9"
    with pytest.raises(InvalidAuthority):
        Authority.from_parts("svc", 0)
    with pytest.raises(InvalidAuthority):
        Authority.from_parts("svc", True)


def test_not_a_string() -> None:
    with pytest.raises(InvalidAuthority, match="must be a string"):
        parse_authority(b"1.2.3.4:5")  # type: ignore[arg-type]


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hostname = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(lambda h: not h.split(".")[-1].isdigit())
_port = st.integers(1, 65535)


@given(st.one_of(st.ip_addresses(), _hostname), _port)
def test_roundtrip(host: object, port: int) -> None:
    a = Authority.from_parts(host, port)  # type: ignore[arg-type]
    assert parse_authority(str(a)) == a


@given(st.text(max_size=80))
def test_fuzz_text(text: str) -> None:
    try:
        a = parse_authority(text)
    except ProtocolError:
        return
    assert parse_authority(str(a)) == a


@given(st.from_regex(r"\[?[0-9a-fA-F:.\]\[]{0,30}\]?:?[0-9]{0,6}", fullmatch=True))
def test_fuzz_ipish(text: str) -> None:
    try:
        a = parse_authority(text)
    except ProtocolError:
        return
    assert 1 <= a.port <= 65535
    assert a.ip is not None or a.host
