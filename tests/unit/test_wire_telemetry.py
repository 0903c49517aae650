"""hbone.wire.baggage, .forwarded, .tracecontext: the telemetry headers HBONE carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import LimitExceeded, ProtocolError
from hbone.wire.authority import Authority
from hbone.wire.baggage import (
    InvalidBaggage,
    PeerMetadata,
    decode_baggage,
    encode_baggage,
)
from hbone.wire.forwarded import InvalidForwarded, forwarded_value, parse_forwarded
from hbone.wire.tracecontext import InvalidTraceParent, TraceParent, random_traceparent

# --- baggage ------------------------------------------------------------------------------------------------------


def test_ztunnel_baggage_example() -> None:
    text = "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1"
    peer = PeerMetadata.from_baggage(text)
    assert peer == PeerMetadata("K1", "NS1", "N1", "deployment", "N2", "V1")
    assert peer.to_baggage() == text


def test_peer_metadata_omits_empty_and_uses_workload_type() -> None:
    peer = PeerMetadata(namespace="ns", workload_name="cj", workload_type="cronjob", zone="z1")
    assert peer.to_baggage() == "k8s.namespace.name=ns,k8s.cronjob.name=cj,cloud.availability_zone=z1"
    assert PeerMetadata.from_baggage(peer.to_baggage()) == peer
    assert PeerMetadata().is_empty()
    assert PeerMetadata().to_baggage() == ""
    with pytest.raises(InvalidBaggage, match="workload_type"):
        PeerMetadata(workload_name="x", workload_type="daemon").to_baggage()


def test_decode_properties_whitespace_and_multiple_lines() -> None:
    got = decode_baggage(["a = 1 ; p1 ; p2=x , b=%20two%2C", "c="])
    assert got == {"a": "1", "b": " two,", "c": ""}


def test_decode_utf8_percent() -> None:
    assert decode_baggage("k=%C3%A9t%C3%A9") == {"k": "été"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a=1,,b=2", "member 2 is empty"),
        ("novalue", "has no '='"),
        ("bad key=1", "not an RFC 7230 token"),
        ("=1", "not an RFC 7230 token"),
        ('k="quoted"', "forbidden character '\"'"),
        ("k=a\\b", "forbidden character"),
        ("k=%G1", "not followed by two hex digits"),
        ("k=%4", "not followed by two hex digits"),
        ("k=%FF", "does not percent-decode to UTF-8"),
    ],
)
def test_decode_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidBaggage) as info:
        decode_baggage(text)
    assert fragment in str(info.value)


def test_baggage_limits() -> None:
    with pytest.raises(LimitExceeded, match="180"):
        decode_baggage(",".join(f"k{i}=v" for i in range(181)))
    assert len(decode_baggage(",".join(f"k{i}=v" for i in range(180)))) == 180
    with pytest.raises(LimitExceeded, match="8192"):
        decode_baggage("k=" + "v" * 8191)
    with pytest.raises(LimitExceeded, match="8192"):
        encode_baggage({"k": "v" * 8191})
    with pytest.raises(LimitExceeded, match="180"):
        encode_baggage({f"k{i}": "v" for i in range(181)})


def test_encode_rejects_bad_key_and_surrogate() -> None:
    with pytest.raises(InvalidBaggage, match="token"):
        encode_baggage({"a b": "1"})
    with pytest.raises(InvalidBaggage, match="surrogate"):
        encode_baggage({"a": "\ud800"})


_key = st.from_regex(r"[A-Za-z0-9._\-]{1,12}", fullmatch=True)


@given(st.dictionaries(_key, st.text(max_size=20), max_size=10))
def test_baggage_roundtrip(members: dict[str, str]) -> None:
    assert decode_baggage(encode_baggage(members)) == members


@given(st.text(max_size=200))
def test_baggage_fuzz(text: str) -> None:
    try:
        decode_baggage(text)
    except ProtocolError:
        pass


# --- traceparent --------------------------------------------------------------------------------------------------


def test_traceparent_generate_and_parse() -> None:
    tp = TraceParent.generate()
    text = str(tp)
    assert len(text) == 55 and text.startswith("00-") and text.endswith("-01")
    assert TraceParent.parse(text) == tp
    assert tp.sampled
    child = tp.child()
    assert child.trace_id == tp.trace_id and child.parent_id != tp.parent_id
    assert not TraceParent.generate(sampled=False).sampled


def test_random_traceparent_text_is_a_fresh_valid_traceparent() -> None:
    first, second = random_traceparent(), random_traceparent()
    assert TraceParent.parse(first).sampled and first != second
    assert str(TraceParent.parse(first)) == first
    assert not TraceParent.parse(random_traceparent(sampled=False)).sampled


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("01-" + "a" * 32 + "-" + "b" * 16 + "-01", "version '01'"),
        ("00-" + "A" * 32 + "-" + "b" * 16 + "-01", "trace-id"),
        ("00-" + "0" * 32 + "-" + "b" * 16 + "-01", "trace-id is all zeros"),
        ("00-" + "a" * 32 + "-" + "0" * 16 + "-01", "parent-id is all zeros"),
        ("00-" + "a" * 32 + "-" + "b" * 16 + "-0g", "trace-flags"),
        ("00-" + "a" * 32 + "-" + "b" * 16 + "-1", "is 54 characters"),
        ("00_" + "a" * 32 + "_" + "b" * 16 + "_01", "4 '-'-separated"),
        ("00-" + "a" * 31 + "-" + "b" * 17 + "-01", "trace-id"),
    ],
)
def test_traceparent_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidTraceParent) as info:
        TraceParent.parse(text)
    assert fragment in str(info.value)


@given(st.text(alphabet="0123456789abcdefABCDEF-x", min_size=50, max_size=60))
def test_traceparent_fuzz(text: str) -> None:
    try:
        tp = TraceParent.parse(text)
    except ProtocolError:
        return
    assert str(tp) == text


# --- forwarded ----------------------------------------------------------------------------------------------------


def test_forwarded_ztunnel_form() -> None:
    value = forwarded_value(Authority.parse("[2001:db8::1]:4711"), "echo.ns.svc.cluster.local")
    assert value == 'for="[2001:db8::1]:4711";host=echo.ns.svc.cluster.local'
    (el,) = parse_forwarded(value)
    assert el.for_ == "[2001:db8::1]:4711" and el.host == "echo.ns.svc.cluster.local"
    assert forwarded_value("10.0.0.1:5000") == 'for="10.0.0.1:5000"'
    assert forwarded_value(host="svc:80") == 'host="svc:80"'


def test_forwarded_rfc7239_examples() -> None:
    els = parse_forwarded(['For="[2001:db8:cafe::17]:4711"', "for=192.0.2.60;proto=http;by=203.0.113.43, for=_hid"])
    assert [e.for_ for e in els] == ["[2001:db8:cafe::17]:4711", "192.0.2.60", "_hid"]
    assert els[1].proto == "http" and els[1].by == "203.0.113.43"
    assert parse_forwarded('for=unknown, ,for="_x:_p"')[1].for_ == "_x:_p"
    assert parse_forwarded('host="a\\"b"')[0].host == 'a"b'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no elements"),
        ("for", "not followed by '='"),
        ("for=", "expected a token or quoted string"),
        ('for="1.2.3.4', "not terminated"),
        ("for=1.2.3.4;for=5.6.7.8", "occurs twice"),
        ('for="[::1"', "without ']'"),
        ('for="[zz]:1"', "not an IPv6"),
        ("for=hostname", "is not IPv4"),
        ('for="1.2.3.4:x"', "':' followed by a port"),
        ("for=1.2.3.4 x", "expected ';' or ','"),
        ("=x", "expected a parameter name"),
        ('host="a\x01"', "control character"),
    ],
)
def test_forwarded_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidForwarded) as info:
        parse_forwarded(text)
    assert fragment in str(info.value)


def test_forwarded_limits() -> None:
    with pytest.raises(LimitExceeded):
        parse_forwarded(",".join(["for=1.2.3.4"] * 65))
    with pytest.raises(LimitExceeded):
        parse_forwarded("host=" + "a" * 9000)
    with pytest.raises(InvalidForwarded):
        forwarded_value()
    with pytest.raises(InvalidForwarded):
        forwarded_value("10.0.0.1:5", "bad\nhost")


@given(st.one_of(st.ip_addresses(), st.none()), st.integers(1, 65535), st.text(max_size=20))
def test_forwarded_roundtrip(ip: object, port: int, host: str) -> None:
    node = Authority.from_parts(ip, port) if ip is not None else None  # type: ignore[arg-type]
    try:
        value = forwarded_value(node, host)
    except ProtocolError:
        return
    (el,) = parse_forwarded(value)
    assert el.host == host
    assert el.for_ == (str(node) if node else None)


@given(st.text(alphabet='for=;,"\\[]:._ 1234abcdef\t', max_size=60))
def test_forwarded_fuzz(text: str) -> None:
    try:
        parse_forwarded(text)
    except ProtocolError:
        pass
