"""hbone.net.h2.headers (h2tuning item 9): the fast pass may only accept what h2's own validation accepts, and a
tuned connection must accept, reject and report header blocks exactly like stock h2."""

from __future__ import annotations

import inspect
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.stream
import h2.utilities
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, composite

from hbone.net.h2.headers import FastHeaderStream, acceptable
from hbone.net.h2.tuning import make_h2
from hbone.net.settings import H2Settings

Flags = h2.utilities.HeaderValidationFlags
ALL_FLAGS = [Flags(c, t, r, p) for c in (False, True) for t in (False, True) for r in (False, True) for p in (False,)]
NAMES = [b":method", b":authority", b":path", b":scheme", b":status", b":protocol", b":bogus", b"host",
         b"te", b"connection", b"cookie", b"baggage", b"traceparent", b"x-tun", b"Upper", b"a:b", b"",
         b"sp ace", b"\xff"]  # fmt: skip
VALUES = [b"CONNECT", b"POST", b"GET", b"a:1", b"b:2", b"/", b"", b"trailers", b"gzip", b" lead", b"trail\t",
          b"nul\x00", b"lf\n", b"cr\r", b"200", b"\x80\xff", b"https"]  # fmt: skip


def h2_verdict(block: list[Any], flags: Any) -> tuple[str, Any]:
    try:
        return "ok", list(h2.utilities.validate_headers(block, flags))
    except h2.exceptions.ProtocolError as e:
        return "error", str(e)


@composite
def blocks(draw: DrawFn) -> list[tuple[bytes, bytes]]:
    name = st.one_of(st.sampled_from(NAMES), st.binary(max_size=6))
    value = st.one_of(st.sampled_from(VALUES), st.binary(max_size=6))
    return draw(st.lists(st.tuples(name, value), max_size=7))


@settings(max_examples=3000, deadline=None)
@given(blocks(), st.sampled_from(ALL_FLAGS))
def test_acceptable_only_accepts_what_h2_accepts(block: list[tuple[bytes, bytes]], flags: Any) -> None:
    if acceptable(block, flags):
        assert h2_verdict(block, flags) == ("ok", block)


@pytest.mark.parametrize(
    ("block", "flags"),
    [
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"baggage", b"k=v"),
          (b"forwarded", b'for="10.0.0.2:4000"'), (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
         Flags(False, False, False, False)),
        ([(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"p"), (b"x-tun", b"a:1")],
         Flags(False, False, False, False)),
        ([(b":status", b"200"), (b"baggage", b"k=v")], Flags(True, False, True, False)),
        ([(b"grpc-status", b"0")], Flags(True, True, False, False)),
    ],
)  # fmt: skip
def test_acceptable_takes_the_blocks_we_see(block: list[tuple[bytes, bytes]], flags: Any) -> None:
    assert acceptable(block, flags)
    assert h2_verdict(block, flags) == ("ok", block)


def test_tuned_connection_rejects_like_stock_h2() -> None:
    """End to end: a bad request block resets the stream with h2's own error on both connections."""
    bad = [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b"Bad", b"x")]
    for server in (make_h2(client=False, settings=H2Settings()), _stock_server()):
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
            )
        )
        client.initiate_connection()
        client.send_headers(1, bad)
        server.initiate_connection()
        with pytest.raises(h2.exceptions.ProtocolError, match="uppercase header name"):
            server.receive_data(bytes(client.data_to_send()))


def _stock_server() -> h2.connection.H2Connection:
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))


def test_tuned_streams_use_the_fast_pass() -> None:
    server = make_h2(client=False, settings=H2Settings())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "a:1")])
    server.initiate_connection()
    events = server.receive_data(bytes(client.data_to_send()))
    assert server.streams[1].__class__ is FastHeaderStream
    assert events[-1].headers == [(b":method", b"CONNECT"), (b":authority", b"a:1")]


def test_h2_internals_still_exist() -> None:
    # the method we override, and the pipeline it runs, are still these (h2>=4.1,<4.5)
    src = inspect.getsource(h2.stream.H2Stream._process_received_headers)
    assert "normalize_inbound_headers(" in src and "validate_headers(" in src and "_decode_headers" in src
    src = inspect.getsource(h2.utilities.validate_headers)
    for stage in ("_reject_illegal_characters", "_reject_empty_header_names", "_reject_te",
                  "_reject_connection_header", "_reject_pseudo_header_fields", "_check_host_authority_header",
                  "_check_path_header"):  # fmt: skip
        assert stage in src, stage
    assert "_combine_cookie_fields" in inspect.getsource(h2.utilities.normalize_inbound_headers)
