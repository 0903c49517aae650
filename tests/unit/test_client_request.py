"""HboneClient's request headers: built once per target and endpoint, a fresh traceparent every time."""

from __future__ import annotations

from hbone.client import INNER_MTLS_PATH, Endpoint, HboneClient
from hbone.wire.baggage import PeerMetadata
from hbone.wire.tracecontext import TraceParent
from hbone.wire.tunnel_request import TunnelMode, cached_authority, connect_request, post_request

PEER = PeerMetadata("c1", "ns1", "wl", "deployment", "svc", "v1")


def _without_traceparent(headers: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str]:
    [trace] = [v for k, v in headers if k == "traceparent"]
    TraceParent.parse(trace)
    return [h for h in headers if h[0] != "traceparent"], trace


def test_connect_headers_are_connect_request_with_a_new_traceparent_each_time() -> None:
    client = HboneClient(None, metadata=PEER)
    ep, tgt = Endpoint("10.0.0.2"), cached_authority("10.0.0.1:80")
    extra = (("x-a", "1"),)
    first = client._request(tgt, ep, "10.0.0.9:4000", "svc.ns", extra)
    second = client._request(tgt, ep, "10.0.0.9:4000", "svc.ns", extra)
    expected = connect_request(
        tgt, baggage=PEER, forwarded_for="10.0.0.9:4000", forwarded_host="svc.ns", traceparent=TraceParent.generate(),
        extra=extra,
    )  # fmt: skip
    assert [k for k, _ in first] == [k for k, _ in expected]  # ztunnel's order, traceparent in its place
    (rest1, trace1), (rest2, trace2) = _without_traceparent(first), _without_traceparent(second)
    assert rest1 == rest2 == _without_traceparent(expected)[0] and trace1 != trace2


def test_other_inputs_build_other_headers() -> None:
    client = HboneClient(None)
    ep = Endpoint("10.0.0.2")
    a = client._request(cached_authority("10.0.0.1:80"), ep, None, None, ())
    b = client._request(cached_authority("10.0.0.1:81"), ep, None, None, ())
    assert (":authority", "10.0.0.1:80") in a and (":authority", "10.0.0.1:81") in b
    client.metadata = PEER
    assert ("baggage", PEER.to_baggage()) in client._request(cached_authority("10.0.0.1:81"), ep, None, None, ())
    post = Endpoint("10.0.0.2", mode=TunnelMode.POST, inner_tls=True)
    headers = client._request(cached_authority("10.0.0.1:81"), post, None, None, ())
    expected = post_request(
        "10.0.0.1:81", "10.0.0.2:15008", INNER_MTLS_PATH, baggage=PEER, traceparent=TraceParent.generate()
    )
    assert _without_traceparent(headers)[0] == _without_traceparent(expected)[0]
