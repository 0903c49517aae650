"""Sans-IO HTTP/1.1 framing: heads, bodies, limits, smuggling refusals; split-anywhere and fuzz properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbone.errors import ProtocolError
from hbone.wire.http1 import (
    Data,
    EndOfMessage,
    Event,
    Framing,
    HeadTooLarge,
    Http1Error,
    MessageReader,
    Request,
    Response,
    encode_chunk,
    encode_last_chunk,
    encode_request,
    end_to_end,
    keep_alive,
)

PIPELINE = (
    b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 19\r\n\r\n"
    b"GET /two HTTP/1.1\r\nHost: b.example\r\nContent-Length: 4\r\n\r\nbody"
)


def merged(events: list[Event]) -> list[Event]:
    """Adjacent Data events joined, so different splits compare equal."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + ev.data)
        elif not (isinstance(ev, Data) and not ev.data):
            out.append(ev)
    return out


def read_all(reader: MessageReader, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += reader.feed(chunk)
        while reader.done:
            reader.next_message()
            events += reader.feed(b"")
            if not reader.done:
                break
    return merged(events)


def test_pipelined_chunked_and_length_requests() -> None:
    events = read_all(MessageReader(), [PIPELINE])
    first, second = events[0], events[3]
    assert isinstance(first, Request) and first.method == "POST" and first.get("host") == "a.example"
    assert events[1] == Data(b"abc0123456789abcdef") and events[2] == EndOfMessage((("x-sum", "19"),))
    assert isinstance(second, Request) and second.target == "/two"
    assert events[4:] == [Data(b"body"), EndOfMessage()]


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(PIPELINE)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [PIPELINE[a:b] for a, b in zip([0, *points], [*points, len(PIPELINE)], strict=True)]
    assert read_all(MessageReader(), pieces) == read_all(MessageReader(), [PIPELINE])


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    for response in (False, True):
        reader = MessageReader(response=response, max_head=256)
        try:
            reader.feed(data)
            reader.eof()
        except ProtocolError:
            pass


@given(
    st.sampled_from(["GET", "POST", "PATCH", "M-SEARCH"]),
    st.from_regex(r"/[a-z0-9/?=&%.-]{0,30}", fullmatch=True),
    st.lists(st.tuples(st.from_regex(r"x-[a-z0-9-]{1,12}", fullmatch=True),
                       st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(str.strip)), max_size=6),
)  # fmt: skip
def test_encode_parse_roundtrip(method: str, target: str, extra: list[tuple[str, str]]) -> None:
    head = Request(method, target, "HTTP/1.1", (("host", "h.example"), *extra))
    events = MessageReader().feed(encode_request(head))
    assert events == [head, EndOfMessage()]


@pytest.mark.parametrize(
    ("raw", "status", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Transfer"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400, "Content-Length"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "field name 'Host ' is not a token"),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "bare LF at byte 23"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "without Host"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "not supported"),
        (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request line"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "not supported"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "does not end in chunked"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", 400, "CRLF"),
    ],
)
def test_precise_errors(raw: bytes, status: int, why: str) -> None:
    with pytest.raises(Http1Error) as err:
        MessageReader().feed(raw)
    assert err.value.http_status == status and why in str(err.value)


def test_limits() -> None:
    with pytest.raises(HeadTooLarge) as err:
        MessageReader(max_head=64).feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"x" * 100)
    assert err.value.http_status == 431
    with pytest.raises(HeadTooLarge):
        MessageReader(max_headers=2).feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n")
    with pytest.raises(HeadTooLarge):
        MessageReader().feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000)


def test_response_framing() -> None:
    interim = MessageReader(response=True).feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert [type(e) for e in interim] == [Response, Response, Data, EndOfMessage]
    head = MessageReader(response=True, request_method="HEAD")
    assert head.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")[1:] == [EndOfMessage()]
    for status in (204, 304):
        assert MessageReader(response=True).feed(f"HTTP/1.1 {status} X\r\n\r\n".encode())[1:] == [EndOfMessage()]
    close = MessageReader(response=True)
    assert close.feed(b"HTTP/1.0 200 OK\r\n\r\npart")[1:] == [Data(b"part")]
    assert close.framing is Framing.UNTIL_CLOSE and close.eof() == [EndOfMessage()]
    cut = MessageReader(response=True)
    cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    with pytest.raises(Http1Error, match="closed mid-message"):
        cut.eof()
    upgrade = MessageReader(response=True)
    upgrade.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    assert upgrade.done and upgrade.take_buffered() == b"\x81\x02hi"


def test_keep_alive_hop_by_hop_and_writers() -> None:
    req = MessageReader().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nX-Keep: 2\r\n\r\n"
    )[0]
    assert isinstance(req, Request) and not keep_alive(req)
    assert end_to_end(req.headers) == [("Host", "a"), ("X-Keep", "2")]
    old = MessageReader().feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0]
    assert isinstance(old, Request) and keep_alive(old)
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n" and encode_chunk(b"") == b""
    assert encode_last_chunk([("x-a", "1")]) == b"0\r\nx-a: 1\r\n\r\n"
