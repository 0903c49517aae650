"""HBONE request and response heads as HPACK hands them over (raw name/value bytes): CONNECT and POST+x-tun
requests with their telemetry headers, strict and lenient, and the client's view of the response."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.tunnel_request import connect_request, parse_tunnel_request, parse_tunnel_response, post_request
from tests.fuzz.harness import Bytes, Harness, encode_headers, headers_of, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    headers = headers_of(b.rest())
    if opts & 2:
        parse_tunnel_response(headers)
        return
    req = parse_tunnel_request(headers, strict_telemetry=bool(opts & 1))
    _ = (str(req.target), req.peer)


def seeds() -> dict[str, bytes]:
    connect = connect_request(
        "10.0.0.1:80",
        baggage={"k8s.namespace.name": "default", "k8s.deployment.name": "sleep"},
        forwarded_for="10.0.0.2:3333",
        forwarded_host="reviews.default.svc.cluster.local",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    post = post_request("[fd00::1]:8080", "gateway.example:15008", "/tunnel")
    return {
        "connect": pack(b"\1", encode_headers(connect)),
        "connect-lenient": pack(b"\0", encode_headers([*connect, ("baggage", "%%%"), ("traceparent", "x")])),
        "post": pack(b"\1", encode_headers(post)),
        "pseudo-after-regular": pack(b"\0", encode_headers([("a", "b"), (":method", "CONNECT")])),
        "response": pack(b"\2", encode_headers([(":status", "200"), ("baggage", "k8s.cluster.name=c1")])),
        "response-bad": pack(b"\2", encode_headers([(":status", "2x0")])),
    }


HARNESS = Harness("tunnel_request", run, (HboneError,), seeds)
