"""Per-call codecs and the protobuf backend check."""

from __future__ import annotations

import logging

import pytest
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import GrpcStatus, HboneError
from hbone.grpc import codec
from hbone.grpc.codec import Codec, CodecError, ProtoCodec, RawCodec, protobuf_backend, require_fast_protobuf


def test_upb_backend_is_in_use() -> None:
    # The pure-Python backend is 16-160x slower; CI must run on upb.
    assert protobuf_backend() == "upb"
    assert require_fast_protobuf(strict=True) is True


def test_slow_backend_warns_or_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(codec, "protobuf_backend", lambda: "python")
    with pytest.raises(RuntimeError, match="16-160x slower"):
        require_fast_protobuf(strict=True)
    with caplog.at_level(logging.WARNING, logger="hbone.grpc.codec"):
        assert require_fast_protobuf() is False


def test_raw_codec() -> None:
    c: Codec[bytes] = RawCodec()
    assert c.encode(b"abc") == b"abc"
    assert RawCodec().encode(memoryview(b"xy")) == b"xy"
    assert c.decode(b"\x00") == b"\x00"
    with pytest.raises(CodecError):
        RawCodec().encode("text")  # type: ignore[arg-type]


def test_proto_codec_round_trip() -> None:
    c = ProtoCodec(status_pb2.Status)
    msg = status_pb2.Status(code=7, message="denied")
    assert c.decode(c.encode(msg)) == msg
    assert c.message_class is status_pb2.Status
    assert c.decode(b"") == status_pb2.Status()


def test_proto_codec_parse_error_is_internal() -> None:
    c = ProtoCodec(status_pb2.Status)
    with pytest.raises(CodecError, match=r"^failed to parse google\.rpc\.Status") as ei:
        c.decode(b"\x0a\xff")  # field 1 as length-delimited with a truncated length
    assert ei.value.grpc_status is GrpcStatus.INTERNAL


def test_proto_codec_rejects_wrong_type() -> None:
    c = ProtoCodec(status_pb2.Status)
    with pytest.raises(CodecError, match=r"expected google\.rpc\.Status"):
        c.encode(b"raw")
    with pytest.raises(TypeError):
        ProtoCodec(int)


@given(st.binary(max_size=64))
def test_proto_decode_of_garbage_only_raises_codec_error(data: bytes) -> None:
    try:
        ProtoCodec(status_pb2.Status).decode(data)
    except HboneError as exc:
        assert isinstance(exc, CodecError)
