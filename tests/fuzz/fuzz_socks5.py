"""The SOCKS5 server state machine (RFC 1928/1929) fed a client's bytes in arbitrary reads, answering every event
the way the front end does (accept or refuse the credentials, reply success or failure). Violations are
reported as `ProtocolViolation` events, so here even a `Socks5Error` escaping `feed` would be a bug."""

from __future__ import annotations

from hbone.wire import socks5
from tests.fuzz.harness import Bytes, Harness, chunks, pack


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    sizes = b.sizes()
    server = socks5.Socks5Server(require_auth=bool(opts & 1), verifier=lambda u, p: u == p)
    for piece in chunks(b.rest(), sizes):
        events = server.feed(piece)
        while events:
            event = events.pop(0)
            if isinstance(event, socks5.AuthRequest):
                events += server.accept_auth(bool(opts & 2) or event.username == event.password)
            elif isinstance(event, socks5.ConnectRequest):
                _ = (event.host, event.port, str(event.target))
                server.reply(socks5.ReplyCode.SUCCEEDED if opts & 4 else socks5.ReplyCode.HOST_UNREACHABLE)
                server.take_leftover()
            else:
                assert isinstance(event, socks5.ProtocolViolation), event
        server.data_to_send()
    # The client side of the same exchange: replies as a server may send them.
    try:
        reply = socks5.decode_reply(data)
    except socks5.Socks5Error:
        return
    if reply is not None:
        assert 0 < reply[1] <= len(data)


def seeds() -> dict[str, bytes]:
    greet, req = socks5.encode_greeting(), socks5.encode_request("10.0.0.1", 80)
    auth_greet = socks5.encode_greeting([socks5.Method.USERPASS])
    userpass = socks5.encode_userpass("alice", "alice")
    return {
        "v4": pack(b"\4", greet + req + b"payload"),
        "domain": pack(b"\4", greet + socks5.encode_request("reviews.default.svc", 9080)),
        "v6": pack(b"\0", greet + socks5.encode_request("fd00::1", 443)),
        "auth": pack(b"\5", auth_greet + userpass + req),
        "auth-split": pack(b"\5", auth_greet + userpass + req, bytes([1, 2, 3])),
        "bytewise": pack(b"\4", greet + req, b"\1"),
        "bind": pack(b"\0", greet + socks5.encode_request("10.0.0.1", 80, socks5.Command.BIND)),
        "socks4": pack(b"\0", b"\x04\x01\x00\x50\x0a\x00\x00\x01user\x00"),
        "reply": pack(b"\0", socks5.encode_reply(socks5.ReplyCode.SUCCEEDED, ("10.0.0.1", 1080))),
    }


HARNESS = Harness("socks5", run, (), seeds, max_len=2048)
