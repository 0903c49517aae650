"""SOCKS5 server side (RFC 1928) with username/password auth (RFC 1929), as an incremental state machine.

Feed bytes in, get events out, send whatever `data_to_send()` returns. Only CONNECT is supported (like ztunnel's
15080 listener); BIND and UDP ASSOCIATE get reply 0x07. A violation is reported as a `ProtocolViolation` event
after the right failure reply has been queued: the caller flushes `data_to_send()` and closes. Bytes the client
pipelined after its request (optimistic data) are kept and handed back by `take_leftover()`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hbone.errors import HboneError, ProtocolError
from hbone.wire.authority import Authority, IPAddress

VERSION = 0x05
USERPASS_VERSION = 0x01  # RFC 1929 §2
MAX_PENDING = 64 * 1024  # bytes a client may pipeline while we wait for the caller


class Method(enum.IntEnum):
    """RFC 1928 §3 authentication methods."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERPASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    """RFC 1928 §4 CMD."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    """RFC 1928 §5 ATYP."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class ReplyCode(enum.IntEnum):
    """RFC 1928 §6 REP."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(ProtocolError):
    """A SOCKS5 protocol violation; `reply` is the REP code sent before closing (None if nothing was sent)."""

    def __init__(self, message: str, reply: ReplyCode | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class InvalidState(HboneError, RuntimeError):
    """The caller used the state machine out of order (a bug in the caller, not the peer)."""


# --- events -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 1929 credentials; answer with `accept_auth(ok)`. Non-UTF-8 bytes survive as surrogate escapes."""

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A CONNECT to `target`; answer with `reply(code, bind)`."""

    target: Authority
    atyp: AddressType

    @property
    def host(self) -> str:
        return self.target.host

    @property
    def port(self) -> int:
        return self.target.port


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol; any failure reply is already queued. Flush and close."""

    error: Socks5Error


Event = AuthRequest | ConnectRequest | ProtocolViolation


class State(enum.Enum):
    GREETING = "greeting"
    USERPASS = "userpass"  # waiting for the RFC 1929 sub-negotiation
    AUTH_PENDING = "auth-pending"  # AuthRequest emitted; the caller must accept_auth()
    REQUEST = "request"
    REPLY_PENDING = "reply-pending"  # ConnectRequest emitted; the caller must reply()
    ESTABLISHED = "established"
    CLOSED = "closed"


# A parser consumes a complete message from the buffer: (bytes consumed, events), or None for "need more data".
_Parser = Callable[["Socks5Server", bytes], "tuple[int, list[Event]] | None"]


class Socks5Server:
    """Server half of one SOCKS5 connection (RFC 1928 §3 to §6)."""

    def __init__(self, require_auth: bool = False, verifier: Callable[[str, str], bool] | None = None) -> None:
        self.require_auth = require_auth
        self.verifier = verifier
        self.state = State.GREETING
        self._buffer = bytearray()
        self._outgoing = bytearray()

    # --- input ----------------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """Consume bytes from the client and return the events they complete."""
        if self.state is State.CLOSED:
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            while (parser := _PARSERS.get(self.state)) is not None:
                step = parser(self, bytes(self._buffer))
                if step is None:
                    break
                consumed, new = step
                del self._buffer[:consumed]
                events += new
                if self._closed():
                    break
            if not self._closed() and len(self._buffer) > MAX_PENDING:
                raise Socks5Error(f"client sent more than {MAX_PENDING} bytes before the server answered")
        except Socks5Error as exc:
            self.state = State.CLOSED
            self._buffer.clear()
            events.append(ProtocolViolation(exc))
        return events

    def _closed(self) -> bool:
        return self.state is State.CLOSED

    def data_to_send(self) -> bytes:
        """Bytes to write to the client, drained."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def take_leftover(self) -> bytes:
        """Bytes the client sent after its request (the start of the tunnelled stream), drained."""
        if self.state not in (State.REPLY_PENDING, State.ESTABLISHED):
            return b""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    # --- caller decisions -----------------------------------------------------------------------------------------

    def accept_auth(self, ok: bool) -> list[Event]:
        """Answer an `AuthRequest` (RFC 1929 §2 status); returns events from bytes the client pipelined meanwhile."""
        self._expect(State.AUTH_PENDING, "accept_auth")
        self._outgoing += bytes((USERPASS_VERSION, 0x00 if ok else 0x01))
        if not ok:
            self.state = State.CLOSED
            self._buffer.clear()
            return []
        self.state = State.REQUEST
        return self.feed(b"")

    def reply(self, code: ReplyCode | int, bind: tuple[str | IPAddress, int] | None = None) -> None:
        """Answer the `ConnectRequest` (RFC 1928 §6). Anything but SUCCEEDED closes the session."""
        self._expect(State.REPLY_PENDING, "reply")
        self._outgoing += encode_reply(ReplyCode(code), bind)
        self.state = State.ESTABLISHED if code == ReplyCode.SUCCEEDED else State.CLOSED

    def _expect(self, state: State, action: str) -> None:
        if self.state is not state:
            raise InvalidState(f"{action}() called in state {self.state.value}; it is only valid in {state.value}")

    def _fail(self, message: str, reply: ReplyCode | None) -> Socks5Error:
        if reply is not None:
            self._outgoing += encode_reply(reply, None)
        return Socks5Error(message, reply)

    # --- parsers (the state table below maps states to these) ------------------------------------------------------

    def _parse_greeting(self, buf: bytes) -> tuple[int, list[Event]] | None:
        if not buf:
            return None
        if buf[0] != VERSION:
            hint = " (SOCKS4 is not supported)" if buf[0] == 0x04 else ""
            raise Socks5Error(f"greeting byte 0 is 0x{buf[0]:02x}, expected SOCKS version 0x05{hint}")
        if len(buf) < 2:
            return None
        count = buf[1]
        if count == 0:
            self._outgoing += bytes((VERSION, Method.NO_ACCEPTABLE))
            raise Socks5Error("greeting byte 1 (NMETHODS) is 0; at least one method is required")
        if len(buf) < 2 + count:
            return None
        offered = set(buf[2 : 2 + count])
        wanted = Method.USERPASS if self.require_auth else Method.NO_AUTH
        if wanted not in offered:
            self._outgoing += bytes((VERSION, Method.NO_ACCEPTABLE))
            listed = ", ".join(f"0x{m:02x}" for m in sorted(offered))
            raise Socks5Error(f"no acceptable method: client offered [{listed}], server requires 0x{wanted:02x}")
        self._outgoing += bytes((VERSION, wanted))
        self.state = State.USERPASS if wanted == Method.USERPASS else State.REQUEST
        return 2 + count, []

    def _parse_userpass(self, buf: bytes) -> tuple[int, list[Event]] | None:
        if not buf:
            return None
        if buf[0] != USERPASS_VERSION:
            self._outgoing += bytes((USERPASS_VERSION, 0x01))
            raise Socks5Error(f"auth byte 0 is 0x{buf[0]:02x}, expected RFC 1929 version 0x01")
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if ulen == 0:
            self._outgoing += bytes((USERPASS_VERSION, 0x01))
            raise Socks5Error("auth byte 1 (ULEN) is 0; RFC 1929 requires a username of 1..255 bytes")
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]  # PLEN 0 is tolerated: some clients send a user with an empty password
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        user = buf[2 : 2 + ulen].decode("utf-8", "surrogateescape")
        password = buf[3 + ulen : end].decode("utf-8", "surrogateescape")
        if self.verifier is None:
            self.state = State.AUTH_PENDING
            return end, [AuthRequest(user, password)]
        if not self.verifier(user, password):
            self._outgoing += bytes((USERPASS_VERSION, 0x01))
            raise Socks5Error(f"authentication failed for user {user!r}")
        self._outgoing += bytes((USERPASS_VERSION, 0x00))
        self.state = State.REQUEST
        return end, []

    def _parse_request(self, buf: bytes) -> tuple[int, list[Event]] | None:
        if len(buf) < 4:
            return None
        ver, cmd, rsv, atyp = buf[0], buf[1], buf[2], buf[3]
        if ver != VERSION:
            raise self._fail(f"request byte 0 is 0x{ver:02x}, expected 0x05", ReplyCode.GENERAL_FAILURE)
        if cmd != Command.CONNECT:
            name = Command(cmd).name if cmd in Command._value2member_map_ else "unknown"
            message = f"request command 0x{cmd:02x} ({name}) is not supported; only CONNECT (0x01)"
            raise self._fail(message, ReplyCode.COMMAND_NOT_SUPPORTED)
        if rsv != 0x00:
            raise self._fail(f"request byte 2 (RSV) is 0x{rsv:02x}, expected 0x00", ReplyCode.GENERAL_FAILURE)
        if atyp == AddressType.IPV4:
            end = 4 + 4 + 2
        elif atyp == AddressType.IPV6:
            end = 4 + 16 + 2
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return None
            if buf[4] == 0:
                raise self._fail("request byte 4 (domain length) is 0", ReplyCode.GENERAL_FAILURE)
            end = 5 + buf[4] + 2
        else:
            message = f"request byte 3 (ATYP) is 0x{atyp:02x}; expected 0x01, 0x03 or 0x04"
            raise self._fail(message, ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        if len(buf) < end:
            return None
        (port,) = struct.unpack_from("!H", buf, end - 2)
        host: str | IPAddress
        if atyp == AddressType.IPV4:
            host = ipaddress.IPv4Address(buf[4:8])
        elif atyp == AddressType.IPV6:
            host = ipaddress.IPv6Address(buf[4:20])
        else:
            raw = buf[5 : end - 2]
            if not raw.isascii():
                raise self._fail(f"request domain {raw!r} is not ASCII", ReplyCode.GENERAL_FAILURE)
            host = raw.decode("ascii")
        try:
            target = Authority.from_parts(host, port)
        except ProtocolError as exc:
            raise self._fail(f"request target is invalid: {exc}", ReplyCode.GENERAL_FAILURE) from None
        self.state = State.REPLY_PENDING
        return end, [ConnectRequest(target, AddressType(atyp))]


_PARSERS: dict[State, _Parser] = {
    State.GREETING: Socks5Server._parse_greeting,
    State.USERPASS: Socks5Server._parse_userpass,
    State.REQUEST: Socks5Server._parse_request,
    # AUTH_PENDING / REPLY_PENDING / ESTABLISHED hold bytes for later; CLOSED drops them.
}


def _encode_address(host: str | IPAddress) -> bytes:
    if isinstance(host, str):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raw = host.encode("ascii", "replace")
            if not 1 <= len(raw) <= 255 or not host.isascii():
                raise Socks5Error(f"domain {host!r} must be 1..255 ASCII bytes") from None
            return bytes((AddressType.DOMAIN, len(raw))) + raw
    else:
        ip = host
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes((atyp,)) + ip.packed


def encode_reply(code: ReplyCode, bind: tuple[str | IPAddress, int] | None) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6); no bind address means 0.0.0.0:0."""
    host, port = bind if bind is not None else ("0.0.0.0", 0)
    if not 0 <= port <= 65535:
        raise Socks5Error(f"bind port {port} is out of range 0..65535")
    return bytes((VERSION, code, 0x00)) + _encode_address(host) + struct.pack("!H", port)


# --- client side (tests, probes) ----------------------------------------------------------------------------------


def encode_greeting(methods: Sequence[int] = (Method.NO_AUTH,)) -> bytes:
    return bytes((VERSION, len(methods), *methods))


def encode_userpass(username: str, password: str) -> bytes:
    user, pw = username.encode("utf-8", "surrogateescape"), password.encode("utf-8", "surrogateescape")
    return bytes((USERPASS_VERSION, len(user))) + user + bytes((len(pw),)) + pw


def encode_request(host: str | IPAddress, port: int, command: Command = Command.CONNECT) -> bytes:
    return bytes((VERSION, command, 0x00)) + _encode_address(host) + struct.pack("!H", port)


@dataclass(frozen=True, slots=True)
class Reply:
    code: ReplyCode
    bind_host: str
    bind_port: int


def decode_reply(data: bytes) -> tuple[Reply, int] | None:
    """Parse a server reply: (reply, bytes consumed), or None when more data is needed."""
    if len(data) < 5:
        return None
    if data[0] != VERSION or data[2] != 0:
        raise Socks5Error(f"reply header {data[:3].hex()} is not 05 ?? 00")
    sizes = {AddressType.IPV4: 4, AddressType.IPV6: 16, AddressType.DOMAIN: 1 + data[4]}
    if data[3] not in sizes or data[1] not in ReplyCode._value2member_map_:
        raise Socks5Error(f"reply has unknown ATYP 0x{data[3]:02x} or REP 0x{data[1]:02x}")
    end = 4 + sizes[AddressType(data[3])] + 2
    if len(data) < end:
        return None
    raw = data[4 : end - 2]
    domain = data[3] == AddressType.DOMAIN
    host = raw[1:].decode("ascii", "replace") if domain else ipaddress.ip_address(raw).compressed
    (port,) = struct.unpack_from("!H", data, end - 2)
    return Reply(ReplyCode(data[1]), host, port), end
