"""hbone.wire.tunnel_request: HBONE CONNECT/POST headers, client and server side."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import BadRequest, ProtocolError
from hbone.wire import tunnel_request
from hbone.wire.authority import Authority
from hbone.wire.baggage import PeerMetadata
from hbone.wire.tracecontext import TraceParent
from hbone.wire.tunnel_request import (
    TunnelMode,
    connect_request,
    parse_tunnel_request,
    parse_tunnel_response,
    post_request,
    response_baggage,
    tunnel_response,
)

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TWO_TUN = [("x-tun", "a:1"), ("x-tun", "b:1")]
PEER = PeerMetadata("c1", "ns1", "wl", "deployment", "svc", "v1")


def test_connect_request_ztunnel_shape() -> None:
    headers = connect_request(
        "[2001:db8::1]:8080",
        baggage=PEER,
        forwarded_for="10.0.0.9:4000",
        forwarded_host="echo.ns.svc.cluster.local",
        traceparent=TP,
    )
    assert headers == [
        (":method", "CONNECT"),
        (":authority", "[2001:db8::1]:8080"),
        ("baggage", PEER.to_baggage()),
        ("forwarded", 'for="10.0.0.9:4000";host=echo.ns.svc.cluster.local'),
        ("traceparent", TP),
    ]
    req = parse_tunnel_request(headers)
    assert req.mode is TunnelMode.CONNECT
    assert req.target == Authority.parse("[2001:db8::1]:8080")
    assert req.peer == PEER
    assert req.forwarded_for == "10.0.0.9:4000"
    assert req.forwarded_host == "echo.ns.svc.cluster.local"
    assert req.traceparent == TraceParent.parse(TP)
    assert req.warnings == ()


def test_connect_minimal_and_extra() -> None:
    assert connect_request(Authority.parse("1.2.3.4:80")) == [(":method", "CONNECT"), (":authority", "1.2.3.4:80")]
    h = connect_request("svc.ns:80", forwarded_network="net2", extra=[("x-istio-source", "waypoint")])
    assert h[-2:] == [("x-forwarded-network", "net2"), ("x-istio-source", "waypoint")]
    assert parse_tunnel_request(h).forwarded_network == "net2"
    assert connect_request("a:1", baggage={})[2:] == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([("Upper", "x")], "lowercase"),
        ([(":path", "/")], "pseudo-headers"),
        ([("connection", "close")], "connection-specific"),
        ([("x-a", "a\r\nb")], "forbidden character"),
        ([("x-a", " padded")], "whitespace"),
    ],
)
def test_connect_extra_rejected(extra: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        connect_request("a:1", extra=extra)


def test_post_request() -> None:
    h = post_request(Authority.parse("10.0.0.1:8080"), "proxy.example:443", "/tun", traceparent=TraceParent.parse(TP))
    assert h[:5] == [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/tun"),
        (":authority", "proxy.example:443"),
        ("x-tun", "10.0.0.1:8080"),
    ]
    req = parse_tunnel_request(h)
    assert req.mode is TunnelMode.POST and req.path == "/tun" and req.authority == "proxy.example:443"
    assert str(req.target) == "10.0.0.1:8080"
    assert post_request("a:1", "Proxy")[3] == (":authority", "proxy")
    assert post_request("a:1", "[::1]")[3] == (":authority", "[::1]")
    with pytest.raises(BadRequest, match="start with '/'"):
        post_request("a:1", "p", "x")
    with pytest.raises(BadRequest, match="not a valid host"):
        post_request("a:1", "p q")


def test_bytes_headers_accepted() -> None:
    req = parse_tunnel_request([(b":method", b"CONNECT"), (b":authority", b"10.1.1.1:9")])
    assert str(req.target) == "10.1.1.1:9"


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ([(":authority", "a:1")], "no :method"),
        ([(":method", "GET"), (":authority", "a:1")], "method 'GET' cannot open a tunnel"),
        ([(":method", "CONNECT")], "no :authority"),
        ([(":method", "CONNECT"), (":authority", "a")], "no port"),
        ([(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")], "must omit :path (RFC 9113 §8.5)"),
        ([(":method", "CONNECT"), (":authority", "a:1"), (":scheme", "https")], "must omit :scheme"),
        ([(":method", "CONNECT"), (":authority", "a:1"), (":protocol", "websocket")], "extended CONNECT"),
        ([(":method", "CONNECT"), (":method", "CONNECT"), (":authority", "a:1")], "duplicate pseudo-header"),
        ([(":method", "CONNECT"), ("x", "1"), (":authority", "a:1")], "after a regular header"),
        ([(":method", "CONNECT"), (":foo", "1")], "unknown request pseudo-header"),
        ([(":method", "CONNECT"), (":authority", "a:1"), ("te", "gzip")], "only 'trailers'"),
        ([(":method", "CONNECT"), (":authority", "a:1"), ("Baggage", "a=1")], "lowercase"),
        ([(":method", "CONNECT"), (":authority", "a:1"), ("upgrade", "h2c")], "connection-specific"),
        ([(":method", "POST"), (":scheme", "https"), (":path", "/"), (":authority", "p")], "no x-tun"),
        ([(":method", "POST"), (":path", "/"), (":authority", "p"), ("x-tun", "a:1")], "no :scheme"),
        ([(":method", "POST"), (":scheme", "https"), (":path", "/"), ("x-tun", "a:1")], "neither :authority"),
        (
            [(":method", "POST"), (":scheme", "https"), (":path", "/"), (":authority", "p"), ("x-tun", "a")],
            "no port",
        ),
        (
            [*[(":method", "POST"), (":scheme", "h"), (":path", "/"), (":authority", "p")], *TWO_TUN],
            "2 x-tun headers",
        ),
    ],
)
def test_parse_rejects(headers: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_tunnel_request(headers)
    assert fragment in str(info.value)
    assert info.value.http_status == 400


def test_lenient_and_strict_telemetry() -> None:
    headers = [
        (":method", "CONNECT"),
        (":authority", "a:1"),
        ("baggage", "broken"),
        ("forwarded", "for=nonsense"),
        ("traceparent", "garbage"),
    ]
    req = parse_tunnel_request(headers)
    assert req.baggage == {} and req.forwarded_for is None and req.traceparent is None
    assert len(req.warnings) == 3
    with pytest.raises(BadRequest, match="has no '='"):
        parse_tunnel_request(headers, strict_telemetry=True)
    two_tp = [(":method", "CONNECT"), (":authority", "a:1"), ("traceparent", TP), ("traceparent", TP)]
    assert "2 traceparent" in parse_tunnel_request(two_tp).warnings[0]


def test_responses() -> None:
    assert tunnel_response(200, peer=PEER) == [(":status", "200"), ("baggage", PEER.to_baggage())]
    assert tunnel_response(503, peer=PEER) == [(":status", "503")]
    assert response_baggage(PeerMetadata()) == []
    resp = parse_tunnel_response([(b":status", b"200"), (b"baggage", PEER.to_baggage().encode())])
    assert resp.ok and resp.peer == PEER
    assert not parse_tunnel_response([(":status", "401")]).ok
    assert parse_tunnel_response([(":status", "200"), ("baggage", ",,")]).peer is None
    with pytest.raises(ProtocolError, match="no :status"):
        parse_tunnel_response([])
    with pytest.raises(ProtocolError, match="3-digit"):
        parse_tunnel_response([(":status", "2000")])
    with pytest.raises(ProtocolError, match="duplicate"):
        parse_tunnel_response([(":status", "200"), (":status", "200")])
    with pytest.raises(BadRequest):
        tunnel_response(99)


_text = st.one_of(st.sampled_from([":method", ":authority", ":path", ":scheme", "x-tun", "baggage"]), st.text())


@given(st.lists(st.tuples(_text, st.one_of(st.text(), st.binary())), max_size=8))
def test_parse_fuzz(headers: list[tuple[str, str | bytes]]) -> None:
    try:
        parse_tunnel_request(headers)
    except ProtocolError:
        pass


@given(
    st.one_of(st.ip_addresses(), st.sampled_from(["svc.ns.svc.cluster.local", "a", "x-1.y"])),
    st.integers(1, 65535),
    st.builds(TraceParent.generate),
    st.dictionaries(st.sampled_from(["k8s.cluster.name", "service.name", "other"]), st.text(max_size=10)),
)
def test_connect_roundtrip(host: object, port: int, tp: TraceParent, bag: dict[str, str]) -> None:
    target = Authority.from_parts(host, port)  # type: ignore[arg-type]
    req = parse_tunnel_request(connect_request(target, baggage=bag, traceparent=tp), strict_telemetry=True)
    assert req.target == target and req.traceparent == tp
    assert dict(req.baggage) == bag


def _outcome(headers: list[tuple[bytes, bytes]], strict: bool) -> object:
    try:
        return tunnel_request._parse(headers, strict)
    except ProtocolError as exc:
        return (type(exc), str(exc))


def _remembered(headers: list[tuple[bytes, bytes]], strict: bool) -> object:
    try:
        return parse_tunnel_request(headers, strict_telemetry=strict)
    except ProtocolError as exc:
        return (type(exc), str(exc))


_TRACEPARENTS = st.sampled_from(
    [TP, TP.replace("-01", "-00"), "00-" + "0" * 32 + "-b7ad6b7169203331-01", "junk", "01-" + TP[3:], TP + " ", "a\r"]
)
_OTHERS = st.lists(
    st.sampled_from(
        [
            (b"baggage", PEER.to_baggage().encode()),
            (b"baggage", b"k=%zz"),
            (b"forwarded", b'for="10.0.0.9:4000"'),
            (b"forwarded", b"for=[bad"),
            (b"x-forwarded-network", b"net2"),
            (b"traceparent", TP.encode()),
            (b"Bad-Name", b"v"),
            (b":path", b"/late"),
            (b"x-tun", b"10.0.0.1:80"),
        ]
    ),
    max_size=4,
)


@given(
    st.sampled_from([b"CONNECT", b"POST", b"GET"]),
    st.sampled_from([b"10.0.0.1:80", b"bad authority"]),
    _OTHERS,
    _TRACEPARENTS,
    st.booleans(),
)
def test_remembered_requests_parse_like_the_full_check(
    method: bytes, authority: bytes, others: list[tuple[bytes, bytes]], traceparent: str, strict: bool
) -> None:
    """Requests ending in a traceparent reuse the check of the rest: the same request or error as checking all."""
    pseudo = [(b":method", method), (b":authority", authority)]
    if method == b"POST":
        pseudo += [(b":scheme", b"https"), (b":path", b"/")]
    headers = [*pseudo, *others, (b"traceparent", traceparent.encode())]
    for _ in range(2):  # the first call remembers, the second reuses
        assert _remembered(headers, strict) == _outcome(headers, strict)


def test_remembered_requests_differ_in_their_traceparent() -> None:
    other = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    head = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
    first = parse_tunnel_request([*head, (b"traceparent", TP.encode())])
    second = parse_tunnel_request([*head, (b"traceparent", other.encode())])
    assert first.traceparent == TraceParent.parse(TP) and second.traceparent == TraceParent.parse(other)
    assert second.headers == (("traceparent", other),)
    first.baggage["x"] = "y"  # type: ignore[index]  # a caller's change stays its own
    assert parse_tunnel_request([*head, (b"traceparent", TP.encode())]).baggage == {}


@pytest.mark.parametrize("status", [b"2\xb20", b"20", b"2000", b"2a0", "\u0662\u0660\u0660".encode()])
def test_response_status_must_be_three_ascii_digits(status: bytes) -> None:
    with pytest.raises(ProtocolError, match="3-digit"):
        parse_tunnel_response([(b":status", status)])


def test_the_request_memo_keeps_small_header_lists_only() -> None:
    """The memo's keys are peer text: a big header list is parsed in full every time and never remembered."""
    tunnel_request._PARSED.clear()
    small = [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("traceparent", TP)]
    big = [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("x-pad", "p" * 4000), ("traceparent", TP)]
    assert parse_tunnel_request(small).target == parse_tunnel_request(big).target
    assert len(tunnel_request._PARSED) == 1
    assert all(sum(len(n) + len(v) for n, v in key[1]) <= 2048 for key in tunnel_request._PARSED)
