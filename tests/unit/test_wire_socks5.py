"""hbone.wire.socks5: RFC 1928 / RFC 1929 server state machine."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hbone.errors import ProtocolError
from hbone.wire.socks5 import (
    AddressType,
    AuthRequest,
    Command,
    ConnectRequest,
    InvalidState,
    Method,
    ProtocolViolation,
    ReplyCode,
    Socks5Server,
    State,
    decode_reply,
    encode_greeting,
    encode_reply,
    encode_request,
    encode_userpass,
)

NOAUTH = encode_greeting([Method.NO_AUTH])


def _feed_split(server: Socks5Server, data: bytes, cut: int) -> list[object]:
    return [*server.feed(data[:cut]), *server.feed(data[cut:])]


@pytest.mark.parametrize(
    ("host", "atyp", "canonical"),
    [
        ("10.1.2.3", AddressType.IPV4, "10.1.2.3:8080"),
        ("2001:db8::7", AddressType.IPV6, "[2001:db8::7]:8080"),
        ("echo.ns.svc.cluster.local", AddressType.DOMAIN, "echo.ns.svc.cluster.local:8080"),
    ],
)
def test_connect_no_auth(host: str, atyp: AddressType, canonical: str) -> None:
    s = Socks5Server()
    assert s.feed(NOAUTH) == []
    assert s.data_to_send() == b"\x05\x00"
    (ev,) = s.feed(encode_request(host, 8080) + b"early data")
    assert isinstance(ev, ConnectRequest)
    assert ev.atyp is atyp and str(ev.target) == canonical and ev.port == 8080
    assert s.state is State.REPLY_PENDING
    s.reply(ReplyCode.SUCCEEDED, ("127.0.0.1", 4444))
    assert s.data_to_send() == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x11\x5c"
    assert s.feed(b" more") == []
    assert s.take_leftover() == b"early data more"
    assert s.take_leftover() == b""
    assert s.state is State.ESTABLISHED


def test_whole_handshake_split_at_every_boundary() -> None:
    wire = encode_greeting([Method.NO_AUTH, Method.USERPASS]) + encode_userpass("alice", "s3cret")
    wire += encode_request("svc.example", 443) + b"payload"
    for cut in range(len(wire) + 1):
        s = Socks5Server(require_auth=True, verifier=lambda u, p: (u, p) == ("alice", "s3cret"))
        events = _feed_split(s, wire, cut)
        assert len(events) == 1 and isinstance(events[0], ConnectRequest), cut
        assert s.data_to_send() == b"\x05\x02\x01\x00"
        assert s.take_leftover() == b"payload"


def test_every_byte_separately_with_auth_event() -> None:
    wire = encode_greeting([Method.USERPASS]) + encode_userpass("bob", "pw") + encode_request("1.2.3.4", 80)
    s = Socks5Server(require_auth=True)
    events: list[object] = []
    for i in range(len(wire)):
        new = s.feed(wire[i : i + 1])
        events += new
        if new and isinstance(new[-1], AuthRequest):
            assert new[-1] == AuthRequest("bob", "pw")
            events += s.accept_auth(True)
    assert isinstance(events[-1], ConnectRequest)
    assert s.data_to_send() == b"\x05\x02\x01\x00"


def test_pipelined_request_after_auth_event() -> None:
    s = Socks5Server(require_auth=True)
    (ev,) = s.feed(encode_greeting([2]) + encode_userpass("u", "") + encode_request("a.b", 1) + b"x")
    assert ev == AuthRequest("u", "")
    (req,) = s.accept_auth(True)
    assert isinstance(req, ConnectRequest) and s.take_leftover() == b"x"


def test_auth_rejected() -> None:
    s = Socks5Server(require_auth=True)
    s.feed(encode_greeting([2]) + encode_userpass("u", "bad"))
    assert s.accept_auth(False) == []
    assert s.data_to_send() == b"\x05\x02\x01\x01"
    assert s.state is State.CLOSED
    assert s.feed(b"anything") == []
    s2 = Socks5Server(require_auth=True, verifier=lambda u, p: False)
    (ev,) = s2.feed(encode_greeting([2]) + encode_userpass("mallory", "x"))
    assert isinstance(ev, ProtocolViolation) and "authentication failed for user 'mallory'" in str(ev.error)
    assert s2.data_to_send() == b"\x05\x02\x01\x01"


def test_non_utf8_credentials_survive() -> None:
    s = Socks5Server(require_auth=True)
    (ev,) = s.feed(encode_greeting([2]) + b"\x01\x02\xff\xfe\x01\x80")
    assert isinstance(ev, AuthRequest)
    assert encode_userpass(ev.username, ev.password) == b"\x01\x02\xff\xfe\x01\x80"


@pytest.mark.parametrize(
    ("require_auth", "wire", "reply", "fragment"),
    [
        (False, b"\x04\x01\x00\x50", b"", "SOCKS4 is not supported"),
        (False, b"GET / HTTP/1.1", b"", "byte 0 is 0x47"),
        (False, b"\x05\x00", b"\x05\xff", "NMETHODS) is 0"),
        (False, b"\x05\x01\x02", b"\x05\xff", "offered [0x02], server requires 0x00"),
        (True, b"\x05\x01\x00", b"\x05\xff", "offered [0x00], server requires 0x02"),
        (True, b"\x05\x01\x02\x05", b"\x05\x02\x01\x01", "expected RFC 1929 version 0x01"),
        (True, b"\x05\x01\x02\x01\x00", b"\x05\x02\x01\x01", "(ULEN) is 0"),
        (False, NOAUTH + b"\x04\x01\x00\x01", b"\x05\x00" + encode_reply(ReplyCode(1), None), "expected 0x05"),
        (False, NOAUTH + encode_request("1.2.3.4", 1, Command.BIND), b"\x05\x00" + encode_reply(ReplyCode(7), None),
         "0x02 (BIND) is not supported"),
        (False, NOAUTH + b"\x05\x03\x00\x01", b"\x05\x00" + encode_reply(ReplyCode(7), None), "UDP_ASSOCIATE"),
        (False, NOAUTH + b"\x05\x09\x00\x01", b"\x05\x00" + encode_reply(ReplyCode(7), None), "0x09 (unknown)"),
        (False, NOAUTH + b"\x05\x01\x01\x01", b"\x05\x00" + encode_reply(ReplyCode(1), None), "(RSV) is 0x01"),
        (False, NOAUTH + b"\x05\x01\x00\x02", b"\x05\x00" + encode_reply(ReplyCode(8), None), "(ATYP) is 0x02"),
        (False, NOAUTH + b"\x05\x01\x00\x03\x00", b"\x05\x00" + encode_reply(ReplyCode(1), None), "length) is 0"),
        (False, NOAUTH + b"\x05\x01\x00\x03\x03a_b\x00\x50", b"\x05\x00" + encode_reply(ReplyCode(1), None),
         "label 'a_b'"),
        (False, NOAUTH + b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50", b"\x05\x00" + encode_reply(ReplyCode(1), None),
         "not ASCII"),
        (False, NOAUTH + b"\x05\x01\x00\x01\x01\x02\x03\x04\x00\x00", b"\x05\x00" + encode_reply(ReplyCode(1), None),
         "port 0 is out of range"),
    ],
)  # fmt: skip
def test_violations(require_auth: bool, wire: bytes, reply: bytes, fragment: str) -> None:
    s = Socks5Server(require_auth=require_auth)
    events = s.feed(wire)
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert fragment in str(events[0].error)
    assert s.data_to_send() == reply
    assert s.state is State.CLOSED


def test_pending_buffer_limit() -> None:
    s = Socks5Server(require_auth=True)
    s.feed(encode_greeting([2]) + encode_userpass("u", "p"))
    (ev,) = s.feed(b"x" * (64 * 1024 + 1))
    assert isinstance(ev, ProtocolViolation) and "more than 65536" in str(ev.error)


def test_misuse_raises_invalid_state() -> None:
    s = Socks5Server()
    with pytest.raises(InvalidState, match="reply"):
        s.reply(ReplyCode.SUCCEEDED)
    with pytest.raises(InvalidState, match="accept_auth"):
        s.accept_auth(True)


@pytest.mark.parametrize("code", list(ReplyCode))
def test_reply_codes(code: ReplyCode) -> None:
    s = Socks5Server()
    s.feed(NOAUTH + encode_request("a.b", 1))
    s.data_to_send()
    s.reply(code, (ipaddress.ip_address("::1"), 5))
    decoded = decode_reply(s.data_to_send())
    assert decoded is not None
    reply, used = decoded
    assert (reply.code, reply.bind_host, reply.bind_port, used) == (code, "::1", 5, 22)
    assert s.state is (State.ESTABLISHED if code == ReplyCode.SUCCEEDED else State.CLOSED)


def test_reply_domain_bind_and_partial_decode() -> None:
    wire = encode_reply(ReplyCode.SUCCEEDED, ("proxy.local", 1080))
    assert decode_reply(wire[:-1]) is None
    decoded = decode_reply(wire)
    assert decoded is not None and decoded[0].bind_host == "proxy.local"
    with pytest.raises(ProtocolError):
        decode_reply(b"\x04\x00\x00\x01\x00")


_host = st.one_of(
    st.ip_addresses(),
    st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True),
)


@given(_host, st.integers(1, 65535), st.binary(max_size=20), st.data())
def test_roundtrip_any_split(host: object, port: int, tail: bytes, data: st.DataObject) -> None:
    wire = NOAUTH + encode_request(host, port) + tail  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(wire)))
    s = Socks5Server()
    (ev,) = _feed_split(s, wire, cut)
    assert isinstance(ev, ConnectRequest)
    assert ev.host == (host.compressed if not isinstance(host, str) else host)
    assert ev.port == port
    assert s.take_leftover() == tail


@given(st.booleans(), st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz(require_auth: bool, chunks: list[bytes]) -> None:
    s = Socks5Server(require_auth=require_auth)
    for chunk in chunks:
        for ev in s.feed(chunk):
            if isinstance(ev, AuthRequest):
                s.accept_auth(True)
            assert isinstance(ev, AuthRequest | ConnectRequest | ProtocolViolation)


@given(st.binary(max_size=60))
def test_fuzz_after_greeting(data: bytes) -> None:
    s = Socks5Server()
    s.feed(NOAUTH)
    s.feed(data)
    try:
        decode_reply(data)
    except ProtocolError:
        pass
