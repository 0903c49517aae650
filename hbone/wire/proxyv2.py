"""PROXY protocol v2 (haproxy proxy-protocol.txt §2.2) writer and incremental reader.

ztunnel writes it in front of the plaintext stream when a workload asks for `application_tunnel{protocol=PROXY}`:
src = the client, dst = the HBONE target, TLV 0xD0 = the client's SPIFFE id (0xD1, the service hostname, is
defined by Istio but not written by ztunnel). Only TCP over IPv4/IPv6 and the LOCAL command are accepted.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hbone.errors import ConfigError, LimitExceeded, ProtocolError
from hbone.identity.spiffe import SpiffeId
from hbone.wire.authority import Authority, IPAddress

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_LEN = 16  # signature, ver/cmd, family, length
DEFAULT_MAX_LENGTH = 4096  # room for a 2048-byte SPIFFE id (SPIFFE-ID §2.3) and a hostname
MAX_LENGTH = HEADER_LEN + 0xFFFF

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TLV_UNIQUE_ID = 0x05
TLV_SSL = 0x20
TLV_NETNS = 0x30
TLV_CLIENT_IDENTITY = 0xD0  # ztunnel: the peer's SPIFFE id
TLV_SERVICE_HOSTNAME = 0xD1  # Istio: the destination service hostname


class Command(enum.IntEnum):
    LOCAL = 0x0  # health checks etc.: the receiver uses the real connection endpoints
    PROXY = 0x1


# §2.2 byte 14: the only family/transport combinations v2 defines; we accept the TCP ones (and UNSPEC).
_FAMILIES = {0x00: ("UNSPEC", 0), 0x11: ("TCP over IPv4", 12), 0x21: ("TCP over IPv6", 36)}
_UNSUPPORTED = {0x12: "UDP over IPv4", 0x22: "UDP over IPv6", 0x31: "UNIX stream", 0x32: "UNIX datagram"}


class ProxyProtocolError(ProtocolError):
    """Bytes that are not a valid PROXY v2 header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    command: Command
    source: tuple[IPAddress, int] | None = None  # None for LOCAL or AF_UNSPEC
    destination: tuple[IPAddress, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        return next((v for t, v in self.tlvs if t == kind), None)

    @property
    def client_identity(self) -> str | None:
        """TLV 0xD0 as text (validated UTF-8 by the reader)."""
        raw = self.tlv(TLV_CLIENT_IDENTITY)
        return raw.decode("utf-8") if raw is not None else None

    @property
    def spiffe_id(self) -> SpiffeId | None:
        """TLV 0xD0 parsed (raises IdentityError if it is not a SPIFFE id)."""
        text = self.client_identity
        return SpiffeId.parse(text) if text is not None else None

    @property
    def service_hostname(self) -> str | None:
        raw = self.tlv(TLV_SERVICE_HOSTNAME)
        return raw.decode("utf-8") if raw is not None else None

    def encode(self) -> bytes:
        """Serialise (§2.2); PROXY needs both endpoints in the same family."""
        if self.command is Command.LOCAL:
            fam, addr = 0x00, b""
        else:
            if self.source is None or self.destination is None:
                raise ProxyProtocolError("a PROXY command header needs both source and destination")
            (sip, sport), (dip, dport) = self.source, self.destination
            if sip.version != dip.version:
                raise ProxyProtocolError(f"source {sip} and destination {dip} are different address families")
            for port in (sport, dport):
                if not 0 <= port <= 0xFFFF:
                    raise ProxyProtocolError(f"port {port} is out of range 0..65535")
            fam = 0x11 if sip.version == 4 else 0x21
            addr = sip.packed + dip.packed + struct.pack("!HH", sport, dport)
        body = bytearray(addr)
        for kind, value in self.tlvs:
            if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
                raise ProxyProtocolError(f"TLV type {kind} or its {len(value)}-byte value does not fit")
            body += struct.pack("!BH", kind, len(value)) + value
        if len(body) > 0xFFFF:
            raise ProxyProtocolError(f"PROXY v2 body is {len(body)} bytes; the maximum is 65535")
        return SIGNATURE + bytes((0x20 | self.command, fam)) + struct.pack("!H", len(body)) + bytes(body)


def _endpoint(value: Authority | tuple[IPAddress | str, int]) -> tuple[IPAddress, int]:
    if isinstance(value, Authority):
        if value.ip is None:
            raise ProxyProtocolError(f"PROXY v2 needs an IP address, got hostname {value.host!r}")
        return value.ip, value.port
    host, port = value
    return (ipaddress.ip_address(host) if isinstance(host, str) else host), port


def proxy_header(
    source: Authority | tuple[IPAddress | str, int],
    destination: Authority | tuple[IPAddress | str, int],
    *,
    client_identity: SpiffeId | str | None = None,
    service_hostname: str | None = None,
    tlvs: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """The header ztunnel writes: PROXY, TCP, src/dst, TLV 0xD0 = client SPIFFE id (and optionally 0xD1)."""
    extra: list[tuple[int, bytes]] = []
    if client_identity is not None:
        extra.append((TLV_CLIENT_IDENTITY, str(client_identity).encode("utf-8")))
    if service_hostname is not None:
        extra.append((TLV_SERVICE_HOSTNAME, service_hostname.encode("utf-8")))
    extra += tlvs
    return ProxyHeader(Command.PROXY, _endpoint(source), _endpoint(destination), tuple(extra)).encode()


def local_header() -> bytes:
    return ProxyHeader(Command.LOCAL).encode()


class ProxyV2Reader:
    """Incremental reader: `feed` returns the header once complete; following bytes stay in `leftover`."""

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if not HEADER_LEN <= max_length <= MAX_LENGTH:
            raise ConfigError(f"PROXY v2 max_length {max_length} must be within {HEADER_LEN}..{MAX_LENGTH}")
        self.max_length = max_length
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None

    @property
    def header(self) -> ProxyHeader | None:
        return self._header

    def feed(self, data: bytes) -> ProxyHeader | None:
        self._buffer += data
        if self._header is not None:
            return None
        buf = self._buffer
        for i in range(min(len(buf), len(SIGNATURE))):
            if buf[i] != SIGNATURE[i]:
                hint = "; PROXY protocol v1 (text) is not supported" if buf[:1] == b"P" else ""
                raise ProxyProtocolError(
                    f"byte {i} is 0x{buf[i]:02x}, expected 0x{SIGNATURE[i]:02x} of the PROXY v2 signature{hint}"
                )
        if len(buf) >= 13:
            version, command = buf[12] >> 4, buf[12] & 0x0F
            if version != 2:
                raise ProxyProtocolError(f"byte 12: version {version}, expected 2")
            if command not in (Command.LOCAL, Command.PROXY):
                raise ProxyProtocolError(f"byte 12: command 0x{command:x}, expected LOCAL (0) or PROXY (1)")
        if len(buf) >= 14 and buf[12] & 0x0F == Command.PROXY and buf[13] not in _FAMILIES:
            fam = buf[13]
            what = _UNSUPPORTED.get(fam)
            reason = f"{what} is not supported" if what else "not a family/transport defined by §2.2"
            raise ProxyProtocolError(f"byte 13: family 0x{fam:02x}: {reason}; expected TCP over IPv4/IPv6")
        if len(buf) < HEADER_LEN:
            return None
        (length,) = struct.unpack_from("!H", buf, 14)
        if HEADER_LEN + length > self.max_length:
            raise LimitExceeded(f"PROXY v2 header is {HEADER_LEN + length} bytes; the limit is {self.max_length}")
        if len(buf) < HEADER_LEN + length:
            return None
        command, fam = Command(buf[12] & 0x0F), buf[13]
        body = bytes(buf[HEADER_LEN : HEADER_LEN + length])
        del buf[: HEADER_LEN + length]
        self._header = _parse_body(command, fam, body)
        return self._header

    @property
    def leftover(self) -> bytes:
        return bytes(self._buffer) if self._header is not None else b""

    def take_leftover(self) -> bytes:
        out = self.leftover
        if self._header is not None:
            self._buffer.clear()
        return out


def _parse_body(command: Command, fam: int, body: bytes) -> ProxyHeader:
    """Addresses then TLVs (§2.2 and §2.2.7). LOCAL discards the whole block, as the spec requires."""
    if command is Command.LOCAL:
        return ProxyHeader(Command.LOCAL)
    name, size = _FAMILIES[fam]
    if len(body) < size:
        raise ProxyProtocolError(f"length {len(body)} is shorter than the {size}-byte {name} address block")
    source: tuple[IPAddress, int] | None = None
    destination: tuple[IPAddress, int] | None = None
    if fam == 0x11:
        sport, dport = struct.unpack_from("!HH", body, 8)
        source = (ipaddress.IPv4Address(body[0:4]), sport)
        destination = (ipaddress.IPv4Address(body[4:8]), dport)
    elif fam == 0x21:
        sport, dport = struct.unpack_from("!HH", body, 32)
        source = (ipaddress.IPv6Address(body[0:16]), sport)
        destination = (ipaddress.IPv6Address(body[16:32]), dport)
    return ProxyHeader(Command.PROXY, source, destination, _parse_tlvs(body, size))


def _parse_tlvs(body: bytes, pos: int) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    while pos < len(body):
        if len(body) - pos < 3:
            raise ProxyProtocolError(f"TLV at body offset {pos} is truncated: {len(body) - pos} of 3 header bytes")
        kind, length = body[pos], int.from_bytes(body[pos + 1 : pos + 3], "big")
        end = pos + 3 + length
        if end > len(body):
            raise ProxyProtocolError(
                f"TLV 0x{kind:02x} at body offset {pos} claims {length} bytes; only {len(body) - pos - 3} remain"
            )
        value = body[pos + 3 : end]
        if kind in (TLV_CLIENT_IDENTITY, TLV_SERVICE_HOSTNAME, TLV_AUTHORITY):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError(f"TLV 0x{kind:02x} at body offset {pos} is not UTF-8") from None
        if kind != TLV_NOOP:  # §2.2.7: NOOP is padding
            tlvs.append((kind, value))
        pos = end
    return tuple(tlvs)
