"""Status trailers, grpc-message percent-encoding, HTTP fallback (PROTOCOL-HTTP2.md, http-grpc-status-mapping)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import GrpcError, GrpcStatus, LimitExceeded, ProtocolError
from hbone.grpc.codec import CodecError
from hbone.grpc.framing import UnsupportedEncoding
from hbone.grpc.metadata import RequestRejected
from hbone.grpc.status import (
    Status,
    decode_grpc_message,
    encode_grpc_message,
    parse_response_headers,
    parse_trailers,
    rejection_headers,
    status_from_exception,
    status_from_http,
    trailers,
    trailers_only,
)

# --- grpc-message ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("", ""),
        ("plain message", "plain message"),
        ("100%", "100%25"),
        ("a\nb\tc", "a%0Ab%09c"),
        ("\u00e9", "%C3%A9"),
        ("\U0001f600", "%F0%9F%98%80"),
        ("~ !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}", "~ !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}"),
        ("\x7f", "%7F"),
    ],
)
def test_grpc_message_encoding_examples(text: str, wire: str) -> None:
    assert encode_grpc_message(text) == wire
    assert decode_grpc_message(wire) == text


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"])))
def test_grpc_message_round_trip(text: str) -> None:
    wire = encode_grpc_message(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode_grpc_message(wire) == text
    assert decode_grpc_message(wire.encode("ascii")) == text


@pytest.mark.parametrize(
    ("wire", "text"),
    [("%", "%"), ("%4", "%4"), ("%zz", "%zz"), ("50%%", "50%%"), ("%C3", "\ufffd"), ("%e9", "\ufffd"), ("%41", "A")],
)
def test_grpc_message_decoding_is_lenient(wire: str, text: str) -> None:
    assert decode_grpc_message(wire) == text


@given(st.binary())
def test_grpc_message_decode_never_raises(raw: bytes) -> None:
    assert isinstance(decode_grpc_message(raw), str)
    assert isinstance(decode_grpc_message(raw.decode("utf-8", "surrogateescape")), str)


def test_lone_surrogate_does_not_raise() -> None:
    assert decode_grpc_message(encode_grpc_message("a\ud800b")).startswith("a")


# --- trailers -------------------------------------------------------------------------------------------------


def test_status_is_frozen() -> None:
    s = Status(GrpcStatus.OK)
    assert s.ok and not Status(GrpcStatus.CANCELLED).ok
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.message = "x"  # type: ignore[misc]


def test_trailers_round_trip_with_details_and_metadata() -> None:
    from google.rpc import status_pb2

    rich = status_pb2.Status(code=5, message="no such thing")
    st_ = Status(GrpcStatus.NOT_FOUND, "no such thing \u2014 really", rich.SerializeToString())
    t = trailers(st_, [("x-a", "1"), ("x-b-bin", b"\x00")])
    assert t[0] == ("grpc-status", "5")
    assert ("grpc-message", "no such thing %E2%80%94 really") in t
    status, md = parse_trailers([(k.encode(), v.encode()) for k, v in t])
    assert status == st_
    assert list(md) == [("x-a", "1"), ("x-b-bin", b"\x00")]
    assert status.rich_details() == rich
    err = status.to_error()
    assert isinstance(err, GrpcError) and err.status is GrpcStatus.NOT_FOUND and err.details == st_.details


def test_ok_trailers_are_minimal() -> None:
    assert trailers(Status(GrpcStatus.OK)) == [("grpc-status", "0")]


def test_trailers_only() -> None:
    h = trailers_only(Status(GrpcStatus.UNIMPLEMENTED, "unknown method"))
    assert h == [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12"),
                 ("grpc-message", "unknown method")]  # fmt: skip
    assert parse_trailers(h)[0] == Status(GrpcStatus.UNIMPLEMENTED, "unknown method")


@pytest.mark.parametrize(
    ("http", "code"),
    [(400, GrpcStatus.INTERNAL), (401, GrpcStatus.UNAUTHENTICATED), (403, GrpcStatus.PERMISSION_DENIED),
     (404, GrpcStatus.UNIMPLEMENTED), (429, GrpcStatus.UNAVAILABLE), (502, GrpcStatus.UNAVAILABLE),
     (503, GrpcStatus.UNAVAILABLE), (504, GrpcStatus.UNAVAILABLE), (500, GrpcStatus.UNKNOWN),
     (418, GrpcStatus.UNKNOWN), (302, GrpcStatus.UNKNOWN)],
)  # fmt: skip
def test_http_status_mapping(http: int, code: GrpcStatus) -> None:
    assert status_from_http(http).code is code
    assert parse_trailers([(":status", str(http)), ("content-type", "text/html")])[0].code is code


def test_grpc_status_wins_over_http_status() -> None:
    assert parse_trailers([(":status", "503"), ("grpc-status", "0")])[0].code is GrpcStatus.OK


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([("grpc-status", "abc")], GrpcStatus.INTERNAL),
        ([("grpc-status", "")], GrpcStatus.INTERNAL),
        ([("grpc-status", "-1")], GrpcStatus.INTERNAL),
        ([("grpc-status", "\u0661")], GrpcStatus.INTERNAL),  # Arabic-Indic digit: isdigit() but not ASCII
        ([("grpc-status", "17")], GrpcStatus.UNKNOWN),
        ([("grpc-status", "99999999999999999999")], GrpcStatus.UNKNOWN),
        ([], GrpcStatus.UNKNOWN),
        ([(":status", "200")], GrpcStatus.UNKNOWN),
        ([(":status", "abc")], GrpcStatus.UNKNOWN),
        (
            [("grpc-status", "3"), ("grpc-status-details-bin", "!!!"), ("x-bad", "caf\u00e9")],
            GrpcStatus.INVALID_ARGUMENT,
        ),
    ],
)
def test_garbage_trailers_give_clean_status(headers: list[tuple[str, str]], code: GrpcStatus) -> None:
    status, _ = parse_trailers(headers)
    assert status.code is code


@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=30)), max_size=6))
def test_parse_trailers_never_raises(headers: list[tuple[bytes, bytes]]) -> None:
    status, _ = parse_trailers(headers)
    assert isinstance(status.code, GrpcStatus)


@given(st.lists(st.tuples(st.sampled_from(["grpc-status", "grpc-message", "grpc-status-details-bin", ":status",
                                           "x-bin", "x"]), st.text(max_size=12)), max_size=6))  # fmt: skip
def test_parse_trailers_never_raises_on_known_names(headers: list[tuple[str, str]]) -> None:
    status, _ = parse_trailers(headers)
    assert isinstance(status.message, str)


# --- response headers -----------------------------------------------------------------------------------------


def test_parse_response_headers_ok() -> None:
    info = parse_response_headers(
        [(b":status", b"200"), (b"content-type", b"application/grpc+proto"), (b"grpc-encoding", b"gzip"),
         (b"grpc-accept-encoding", b"gzip,identity"), (b"x-md", b"v")]
    )  # fmt: skip
    assert info.encoding == "gzip" and info.accept_encoding == ("gzip", "identity")
    assert info.content_type == "application/grpc+proto" and list(info.metadata) == [("x-md", "v")]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([(":status", "503"), ("content-type", "application/grpc")], GrpcStatus.UNAVAILABLE),
        ([(":status", "404"), ("content-type", "text/html")], GrpcStatus.UNIMPLEMENTED),
        ([(":status", "200"), ("content-type", "text/html")], GrpcStatus.UNKNOWN),
        ([(":status", "200")], GrpcStatus.UNKNOWN),
        ([("content-type", "application/grpc")], GrpcStatus.INTERNAL),
        ([(":status", "200"), ("content-type", "application/grpc"), ("x-bin", "!")], GrpcStatus.INTERNAL),
    ],
)
def test_parse_response_headers_rejects(headers: list[tuple[str, str]], code: GrpcStatus) -> None:
    with pytest.raises(GrpcError) as ei:
        parse_response_headers(headers)
    assert ei.value.status is code


# --- exceptions -> status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (GrpcError(GrpcStatus.ABORTED, "x"), GrpcStatus.ABORTED),
        (LimitExceeded("big"), GrpcStatus.RESOURCE_EXHAUSTED),
        (ProtocolError("bad"), GrpcStatus.INTERNAL),
        (UnsupportedEncoding("snappy"), GrpcStatus.UNIMPLEMENTED),
        (CodecError("failed to parse"), GrpcStatus.INTERNAL),
        (ValueError("app bug"), GrpcStatus.UNKNOWN),
    ],
)
def test_status_from_exception(exc: BaseException, code: GrpcStatus) -> None:
    assert status_from_exception(exc).code is code


def test_rejection_headers_carry_http_status_and_accept_encoding() -> None:
    h = rejection_headers(RequestRejected(GrpcStatus.INTERNAL, "bad content-type", http_status=415))
    assert h[:3] == [(":status", "415"), ("content-type", "application/grpc"), ("grpc-accept-encoding", "gzip")]
    assert parse_trailers(h)[0] == Status(GrpcStatus.INTERNAL, "bad content-type")
    h = rejection_headers(RequestRejected(GrpcStatus.UNIMPLEMENTED, "no"), accept_encoding=())
    assert h[0] == (":status", "200") and ("grpc-status", "12") in h
