"""Metadata, grpc-timeout and request/response headers (PROTOCOL-HTTP2.md "Requests"/"Responses")."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import GrpcStatus
from hbone.grpc.metadata import (
    InvalidMetadata,
    Metadata,
    RequestRejected,
    decode_bin_value,
    decode_timeout,
    encode_bin_value,
    encode_timeout,
    is_reserved_header,
    request_headers,
    response_headers,
    validate_request_headers,
)

# --- grpc-timeout ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("30S", 30.0),
        ("100m", 0.1),
        ("5u", 5e-6),
        ("7n", 7e-9),
        ("99999999n", 0.099999999),
        ("00000001S", 1.0),
    ],
)
def test_decode_timeout_spec_units(wire: str, seconds: float) -> None:
    assert decode_timeout(wire) == pytest.approx(seconds)
    assert decode_timeout(wire.encode()) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [(1, "1S"), (1.5, "1500m"), (0.1, "100m"), (3600, "1H"), (90, "90S"), (1e-9, "1n"), (0.25, "250m")],
)
def test_encode_timeout_prefers_exact_coarse_unit(seconds: float, wire: str) -> None:
    assert encode_timeout(seconds) == wire


@pytest.mark.parametrize("bad", ["", "1", "S", "-1S", "1.5S", "123456789S", "1s", "1 S", " 1S", "1SS", "\uff11S"])
def test_decode_timeout_rejects(bad: str) -> None:
    with pytest.raises(InvalidMetadata):
        decode_timeout(bad)


def test_encode_timeout_edges() -> None:
    assert encode_timeout(0) == "1n"
    assert encode_timeout(-5) == "1n"
    assert encode_timeout(1e15) == "99999999H"


@given(st.floats(min_value=1e-9, max_value=99_999_999 * 3600, allow_nan=False))
def test_timeout_round_trip(seconds: float) -> None:
    wire = encode_timeout(seconds)
    digits, unit = wire[:-1], wire[-1]
    assert 1 <= len(digits) <= 8 and unit in "HMSmun"
    back = decode_timeout(wire)
    # Never shorter than asked (beyond float noise), and at most one unit step longer.
    assert back >= seconds * (1 - 1e-12) - 1e-9
    unit_s = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}[unit]
    assert back - seconds <= unit_s + 1e-9 + seconds * 1e-12
    # Units step by at most 1000x (60x above S), so the chosen one still has >= 5 significant digits.
    assert back - seconds <= max(seconds * 1.1e-5, 1e-9)


# --- metadata -------------------------------------------------------------------------------------------------


def test_metadata_multimap_order_and_access() -> None:
    md = Metadata.of([("a", "1"), ("b", "2"), ("a", "3")])
    assert list(md) == [("a", "1"), ("b", "2"), ("a", "3")]
    assert md.get("a") == "3" and md.get_all("a") == ["1", "3"] and md.get("zz") is None
    assert "b" in md and len(md) == 3
    assert md.add("c-bin", b"\x00").get("c-bin") == b"\x00"
    assert "a" not in md.without("a")
    assert Metadata.of({"x": "y"}) == Metadata((("x", "y"),))
    assert Metadata.of(md) is md


@pytest.mark.parametrize(
    "pair",
    [("Upper", "v"), ("", "v"), ("sp ace", "v"), ("uni\u00e9", "v"), ("k", "tab\tx"), ("k", "caf\u00e9"),
     ("k", "nl\n"), ("k", b"bytes"), ("k-bin", "text"), ("k", " lead"), ("k", "trail ")],
)  # fmt: skip
def test_metadata_rejects_invalid_pairs(pair: tuple[str, str | bytes]) -> None:
    with pytest.raises(InvalidMetadata):
        Metadata.of([pair])


@pytest.mark.parametrize(
    "key",
    [":path", ":authority", "content-type", "te", "host", "connection", "keep-alive", "proxy-connection",
     "transfer-encoding", "upgrade", "grpc-timeout", "grpc-status", "grpc-message", "grpc-encoding",
     "grpc-accept-encoding", "grpc-status-details-bin", "grpc-foo"],
)  # fmt: skip
def test_reserved_headers_refused_for_user_metadata(key: str) -> None:
    assert is_reserved_header(key)
    if key.startswith(":"):
        return  # not even a valid metadata key, see below
    value: str | bytes = b"x" if key.endswith("-bin") else "v"
    with pytest.raises(InvalidMetadata, match="reserved"):
        request_headers("/s.S/M", "a", metadata=[(key, value)])
    with pytest.raises(InvalidMetadata, match="reserved"):
        response_headers(metadata=[(key, value)])


def test_allowed_headers_not_reserved() -> None:
    for key in ("x-user", "grpc-trace-bin", "grpc-previous-rpc-attempts", "authorization", "user-agent"):
        assert not is_reserved_header(key)


def test_pseudo_header_is_not_even_a_valid_key() -> None:
    with pytest.raises(InvalidMetadata):
        Metadata.of([(":path", "/x")])


@given(st.binary(max_size=100))
def test_bin_round_trip_padded_and_unpadded(value: bytes) -> None:
    wire = encode_bin_value(value)
    assert "=" not in wire  # emit unpadded
    assert decode_bin_value(wire) == value
    assert decode_bin_value(base64.b64encode(value).decode()) == value  # accept padded


def test_bin_comma_joined_values_and_garbage() -> None:
    assert decode_bin_value("AAE,Ag==") == b"\x00\x01\x02"
    for bad in ("A", "!!!!", "AA=A", "AAE,A"):
        with pytest.raises(InvalidMetadata):
            decode_bin_value(bad)


def test_from_headers_decodes_bin_and_skips_transport() -> None:
    md = Metadata.from_headers(
        [(b":path", b"/a/b"), (b"content-type", b"application/grpc"), (b"user-agent", b"x"),
         (b"grpc-timeout", b"1S"), (b"x-id", b"42"), (b"trace-bin", b"AAE")]
    )  # fmt: skip
    assert list(md) == [("x-id", "42"), ("trace-bin", b"\x00\x01")]


# --- request / response headers -------------------------------------------------------------------------------


def test_request_headers_shape() -> None:
    h = request_headers(
        "/pkg.Svc/Do", "example:443", scheme="https", timeout=2, metadata=[("k", "v"), ("b-bin", b"\xff")],
        encoding="gzip", accept_encoding=("gzip", "identity"),
    )  # fmt: skip
    assert h == [
        (":method", "POST"), (":scheme", "https"), (":path", "/pkg.Svc/Do"), (":authority", "example:443"),
        ("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "hbone-grpc/0.1"),
        ("grpc-timeout", "2S"), ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip,identity"),
        ("k", "v"), ("b-bin", "/w"),
    ]  # fmt: skip
    # Pseudo-headers first (RFC 9113 §8.3).
    assert [k.startswith(":") for k, _ in h][:4] == [True] * 4


def test_user_agent_metadata_is_prepended() -> None:
    h = dict(request_headers("/s.S/M", "a", metadata=[("user-agent", "myapp/2")]))
    assert h["user-agent"] == "myapp/2 hbone-grpc/0.1"


@pytest.mark.parametrize("path", ["", "/", "/svc", "svc/M", "/svc/", "//M", "/a/b/c", "/a/b?x"])
def test_request_headers_rejects_bad_path(path: str) -> None:
    with pytest.raises(InvalidMetadata):
        request_headers(path, "a")


def test_validate_request_round_trip() -> None:
    h = request_headers(
        "/pkg.Svc/Do", "host:1", timeout=0.5, metadata=[("k", "v"), ("k", "w"), ("t-bin", b"\x01")], encoding="gzip"
    )
    info = validate_request_headers([(k.encode(), v.encode()) for k, v in h])
    assert (info.path, info.service, info.method) == ("/pkg.Svc/Do", "pkg.Svc", "Do")
    assert info.timeout == 0.5 and info.encoding == "gzip" and info.accept_encoding == ("gzip",)
    assert list(info.metadata) == [("k", "v"), ("k", "w"), ("t-bin", b"\x01")]
    assert info.authority == "host:1" and info.scheme == "http" and info.user_agent == "hbone-grpc/0.1"
    assert info.content_type == "application/grpc"


def base_request(**override: str | None) -> list[tuple[str, str]]:
    fields: dict[str, str | None] = {
        ":method": "POST", ":scheme": "http", ":path": "/s.S/M", ":authority": "a", "te": "trailers",
        "content-type": "application/grpc",
    }  # fmt: skip
    fields.update(override)
    return [(k, v) for k, v in fields.items() if v is not None]


@pytest.mark.parametrize(
    ("override", "http", "code"),
    [
        ({":method": "GET"}, 405, GrpcStatus.INTERNAL),
        ({":method": None}, 405, GrpcStatus.INTERNAL),
        ({"content-type": "text/html"}, 415, GrpcStatus.INTERNAL),
        ({"content-type": None}, 415, GrpcStatus.INTERNAL),
        ({"content-type": "application/grpcx"}, 415, GrpcStatus.INTERNAL),
        ({":path": "/nope"}, 200, GrpcStatus.UNIMPLEMENTED),
        ({":path": None}, 200, GrpcStatus.UNIMPLEMENTED),
        ({"te": None}, 200, GrpcStatus.INTERNAL),
        ({"te": "gzip"}, 200, GrpcStatus.INTERNAL),
        ({"grpc-timeout": "soon"}, 200, GrpcStatus.INTERNAL),
        ({"grpc-encoding": "snappy"}, 200, GrpcStatus.UNIMPLEMENTED),
        ({"x-bad": "caf\u00e9"}, 200, GrpcStatus.INTERNAL),
        ({"x-bin": "!!"}, 200, GrpcStatus.INTERNAL),
    ],
)
def test_validate_request_failures(override: dict[str, str | None], http: int, code: GrpcStatus) -> None:
    with pytest.raises(RequestRejected) as ei:
        validate_request_headers(base_request(**override))
    assert ei.value.http_status == http
    assert ei.value.status is code


@pytest.mark.parametrize("ct", ["application/grpc+proto", "application/grpc+json", "application/grpc; charset=x"])
def test_validate_request_accepts_content_subtypes(ct: str) -> None:
    assert validate_request_headers(base_request(**{"content-type": ct})).content_type == ct


def test_missing_te_tolerated_when_asked() -> None:
    info = validate_request_headers(base_request(te=None), require_te=False)
    assert info.timeout is None and info.encoding is None


def test_identity_encoding_is_no_encoding() -> None:
    assert validate_request_headers(base_request(**{"grpc-encoding": "identity"})).encoding is None


def test_response_headers() -> None:
    assert response_headers() == [(":status", "200"), ("content-type", "application/grpc"),
                                  ("grpc-accept-encoding", "gzip")]  # fmt: skip
    h = response_headers("gzip", [("x", "y"), ("d-bin", b"\x00")], accept_encoding=())
    assert h == [(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip"),
                 ("x", "y"), ("d-bin", "AA")]  # fmt: skip
    with pytest.raises(InvalidMetadata):
        response_headers(metadata=[("grpc-status", "0")])
