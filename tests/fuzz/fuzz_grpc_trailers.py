"""gRPC header blocks as HPACK hands them over: trailers (documented never to raise), response headers, request
headers, custom metadata (with `-bin` values) and the grpc-timeout / grpc-message encodings."""

from __future__ import annotations

from hbone.errors import GrpcStatus, HboneError
from hbone.grpc.metadata import Metadata, decode_timeout, encode_timeout, request_headers, validate_request_headers
from hbone.grpc.status import (
    Status,
    decode_grpc_message,
    encode_grpc_message,
    parse_response_headers,
    parse_trailers,
    trailers,
)
from tests.fuzz.harness import Bytes, Harness, encode_headers, headers_of, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    raw = b.rest()
    headers = headers_of(raw)
    kind = opts & 3
    if kind == 0:
        try:
            status, metadata = parse_trailers(headers)
        except Exception as exc:
            raise AssertionError(f"parse_trailers is documented never to raise: {exc!r}") from exc
        status.to_error()
        assert Metadata.from_headers(metadata.to_headers()) == metadata
        for _, value in headers:
            text = decode_grpc_message(value)
            assert decode_grpc_message(encode_grpc_message(text)) == text
    elif kind == 1:
        parse_response_headers(headers)
    elif kind == 2:
        info = validate_request_headers(headers, require_te=bool(opts & 4))
        if info.timeout is not None:
            assert decode_timeout(encode_timeout(info.timeout)) >= info.timeout
    else:
        metadata = Metadata.from_headers(headers)
        assert Metadata.from_headers(metadata.to_headers()) == metadata


def seeds() -> dict[str, bytes]:
    md = Metadata.of([("x-user", "alice"), ("trace-bin", b"\0\1\2\xff")])
    ok = trailers(Status(GrpcStatus.OK), md)
    failed = trailers(Status(GrpcStatus.RESOURCE_EXHAUSTED, "too big: 100% ü", b"\x08\x08"), md)
    request = request_headers(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        authority="xds.example:15010",
        timeout=1.5,
        metadata=md,
    )
    response = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")]
    return {
        "trailers-ok": pack(b"\0", encode_headers(ok)),
        "trailers-failed": pack(b"\0", encode_headers(failed)),
        "trailers-only-http": pack(b"\0", encode_headers([(":status", "503")])),
        "trailers-bad-code": pack(b"\0", encode_headers([("grpc-status", "99"), ("grpc-message", "%zz%e2%82")])),
        "response": pack(b"\1", encode_headers(response)),
        "response-html": pack(b"\1", encode_headers([(":status", "200"), ("content-type", "text/html")])),
        "request": pack(b"\6", encode_headers(request)),
        "request-bad-timeout": pack(b"\2", encode_headers([*request, ("grpc-timeout", "123456789H")])),
        "metadata-bin": pack(b"\3", encode_headers([("a-bin", "AAEC,/w"), ("b", "c")])),
    }


HARNESS = Harness("grpc_trailers", run, (HboneError,), seeds)
