"""TLS ClientHello reader for SNI routing (RFC 8446 §4.1.2, records §5.1; SNI RFC 6066 §3; ALPN RFC 7301 §3.1).

The reader only looks: it reassembles the ClientHello from however many TLS records and TCP segments it arrives
in, extracts what routing needs and keeps every byte so the caller can forward the stream untouched. Also maps
Istio's SNI names (`outbound_.<port>_.<subset>_.<host>`) to a target, fixing the original project's bug of
keeping the trailing `_` in the port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hbone.errors import ConfigError, LimitExceeded, ProtocolError
from hbone.wire.authority import Authority, check_hostname

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
MAX_RECORD_PAYLOAD = 1 << 14  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14
DEFAULT_MAX_SIZE = 16 * 1024
MAX_MAX_SIZE = 64 * 1024
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
_SNI_CHARS = re.compile(r"[a-z0-9._-]+\Z")


class ClientHelloError(ProtocolError):
    """Bytes that are not a well-formed TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    cipher_suites: tuple[int, ...]
    server_name: str | None  # host_name SNI, lowercased; None when absent
    alpn: tuple[str, ...]  # protocol names, latin-1 decoded so any byte string survives
    supported_versions: tuple[int, ...]  # from the extension; empty for a TLS <= 1.2-only client
    extensions: tuple[int, ...]  # extension types in the order sent
    raw: bytes  # the complete TLS records that carried the ClientHello, as received

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.supported_versions


class _Cursor:
    """Bounds-checked reads over the ClientHello body; errors name the field and its offset."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if self.remaining() < n:
            raise ClientHelloError(
                f"ClientHello truncated in {what} at body offset {self.pos}: need {n} bytes, have {self.remaining()}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str, low: int, high: int) -> bytes:
        """An opaque vector with a `size`-byte length prefix, `low`..`high` bytes long (RFC 8446 §3.4)."""
        length = self.uint(size, f"{what} length")
        if not low <= length <= high:
            raise ClientHelloError(f"ClientHello {what} length {length} is outside {low}..{high}")
        return self.take(length, what)


class ClientHelloReader:
    """Incremental ClientHello reassembly. `feed` returns the hello once complete; `data` is everything received."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not 64 <= max_size <= MAX_MAX_SIZE:
            raise ConfigError(f"ClientHello max_size {max_size} must be within 64..{MAX_MAX_SIZE}")
        self.max_size = max_size
        self._data = bytearray()  # everything received, forwarded verbatim by the caller
        self._pos = 0  # start of the next unparsed record in _data
        self._handshake = bytearray()
        self._hello: ClientHello | None = None

    @property
    def data(self) -> bytes:
        """Every byte fed so far (the ClientHello records plus anything after them)."""
        return bytes(self._data)

    @property
    def leftover(self) -> bytes:
        """Bytes after the records that carried the ClientHello (empty until it is complete)."""
        return bytes(self._data[self._pos :]) if self._hello is not None else b""

    def feed(self, data: bytes) -> ClientHello | None:
        self._data += data
        if self._hello is not None:
            return None
        while self._hello is None:
            record = self._next_record()
            if record is None:
                return None
            self._handshake += record
            self._check_handshake()
        return self._hello

    def _next_record(self) -> bytes | None:
        buf, pos = self._data, self._pos
        avail = len(buf) - pos
        if avail >= 1:
            ctype = buf[pos]
            if ctype & 0x80 and pos == 0:
                raise ClientHelloError("SSLv2-compatible ClientHello (byte 0 has the high bit set) is not supported")
            if ctype != CONTENT_HANDSHAKE:
                raise ClientHelloError(
                    f"TLS record at byte {pos}: content type {ctype} (0x{ctype:02x}), expected handshake (22)"
                )
        if avail >= 3:
            major, minor = buf[pos + 1], buf[pos + 2]
            if major != 3 or minor > 4:
                raise ClientHelloError(
                    f"TLS record at byte {pos}: legacy_record_version 0x{major:02x}{minor:02x} is not 0x0300..0x0304"
                )
        if avail < 5:
            return None
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if length == 0:
            raise ClientHelloError(f"TLS record at byte {pos} is an empty handshake fragment (RFC 8446 §5.1)")
        if length > MAX_RECORD_PAYLOAD:
            raise ClientHelloError(f"TLS record at byte {pos} has length {length} > 2^14 (RFC 8446 §5.1)")
        if avail < 5 + length:
            return None
        self._pos = pos + 5 + length
        return bytes(buf[pos + 5 : self._pos])

    def _check_handshake(self) -> None:
        hs = self._handshake
        if hs[0] != HANDSHAKE_CLIENT_HELLO:
            raise ClientHelloError(f"handshake message type {hs[0]}, expected client_hello (1)")
        if len(hs) < 4:
            return
        length = int.from_bytes(hs[1:4], "big")
        if length > self.max_size:
            raise LimitExceeded(f"ClientHello is {length} bytes; the limit is {self.max_size}")
        if len(hs) < 4 + length:
            return
        if len(hs) > 4 + length:
            extra = len(hs) - 4 - length
            raise ClientHelloError(f"{extra} bytes of another handshake message follow the ClientHello in its record")
        self._hello = parse_client_hello_body(bytes(hs[4:]), bytes(self._data[: self._pos]))


def parse_client_hello_body(body: bytes, raw: bytes = b"") -> ClientHello:
    """Parse a ClientHello handshake body (RFC 8446 §4.1.2), the bytes after the 4-byte handshake header."""
    cur = _Cursor(body)
    legacy_version = cur.uint(2, "legacy_version")
    cur.take(32, "random")
    cur.vector(1, "legacy_session_id", 0, 32)
    suites = cur.vector(2, "cipher_suites", 2, 0xFFFE)
    if len(suites) % 2:
        raise ClientHelloError(f"ClientHello cipher_suites length {len(suites)} is odd")
    cur.vector(1, "legacy_compression_methods", 1, 0xFF)
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    types: list[int] = []
    if cur.remaining():  # TLS 1.2 and earlier allow a hello without the extensions block
        block = _Cursor(cur.vector(2, "extensions", 0, 0xFFFF))
        if cur.remaining():
            raise ClientHelloError(f"ClientHello has {cur.remaining()} bytes after the extensions block")
        while block.remaining():
            ext_type = block.uint(2, "extension type")
            data = block.vector(2, f"extension {ext_type} data", 0, 0xFFFF)
            if ext_type in types:
                raise ClientHelloError(f"extension {ext_type} appears twice (RFC 8446 §4.2)")
            types.append(ext_type)
            if ext_type == EXT_SERVER_NAME:
                server_name = _parse_sni(data)
            elif ext_type == EXT_ALPN:
                alpn = _parse_alpn(data)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                versions = _parse_versions(data)
    ciphers = tuple(int.from_bytes(suites[i : i + 2], "big") for i in range(0, len(suites), 2))
    return ClientHello(legacy_version, ciphers, server_name, alpn, versions, tuple(types), raw)


def _parse_sni(data: bytes) -> str | None:
    """RFC 6066 §3: ServerNameList; one host_name at most; other name types are skipped."""
    cur = _Cursor(data)
    names = _Cursor(cur.vector(2, "server_name list", 1, 0xFFFF))
    if cur.remaining():
        raise ClientHelloError(f"server_name extension has {cur.remaining()} bytes after its list")
    host = None
    while names.remaining():
        name_type = names.uint(1, "server_name type")
        name = names.vector(2, "server_name host_name", 1, 0xFFFF)
        if name_type != 0:
            continue
        if host is not None:
            raise ClientHelloError("server_name has two host_name entries (RFC 6066 §3)")
        text = name.decode("latin-1").lower()
        if text.endswith("."):
            raise ClientHelloError(f"SNI {text!r} must not end with '.' (RFC 6066 §3)")
        if not _SNI_CHARS.match(text):
            raise ClientHelloError(f"SNI {text[:64]!r} has characters outside letters, digits, '.', '-', '_'")
        host = text
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolNameList <2..2^16-1> of ProtocolName <1..2^8-1>."""
    cur = _Cursor(data)
    names = _Cursor(cur.vector(2, "ALPN protocol_name_list", 2, 0xFFFF))
    if cur.remaining():
        raise ClientHelloError(f"ALPN extension has {cur.remaining()} bytes after its list")
    out = []
    while names.remaining():
        out.append(names.vector(1, "ALPN protocol name", 1, 0xFF).decode("latin-1"))
    return tuple(out)


def _parse_versions(data: bytes) -> tuple[int, ...]:
    """RFC 8446 §4.2.1: ClientHello form, ProtocolVersion versions<2..254>."""
    cur = _Cursor(data)
    raw = cur.vector(1, "supported_versions", 2, 254)
    if len(raw) % 2 or cur.remaining():
        raise ClientHelloError("supported_versions extension is malformed (odd length or trailing bytes)")
    return tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))


# --- Istio SNI names ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IstioSni:
    """`<direction>_.<port>_.<subset>_.<host>` (istio pilot model.BuildDNSSrvSubsetKey); subset "" is written "_"."""

    host: str
    port: int
    subset: str = ""
    direction: str = "outbound"

    @property
    def target(self) -> Authority:
        return Authority.from_parts(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.direction}_.{self.port}_.{self.subset}_.{self.host}"


def parse_istio_sni(sni: str) -> IstioSni | None:
    """Decode an Istio SNI; None if `sni` does not use that form, ProtocolError if it does but is malformed."""
    parts = sni.split(".", 3)
    if len(parts) < 4 or parts[0] not in ("outbound_", "inbound_"):
        return None
    direction, port_text, subset_text, host = parts[0][:-1], parts[1], parts[2], parts[3]
    if not port_text.endswith("_") or not port_text[:-1].isascii() or not port_text[:-1].isdigit():
        raise ClientHelloError(f"Istio SNI {sni!r}: port field {port_text!r} must be digits followed by '_'")
    port = int(port_text[:-1])
    if not 1 <= port <= 65535:
        raise ClientHelloError(f"Istio SNI {sni!r}: port {port} is out of range 1..65535")
    if not subset_text.endswith("_"):
        raise ClientHelloError(f"Istio SNI {sni!r}: subset field {subset_text!r} must end with '_'")
    try:
        host = check_hostname(host)
    except ProtocolError as exc:
        raise ClientHelloError(f"Istio SNI {sni!r}: {exc}") from None
    return IstioSni(host, port, subset_text[:-1], direction)


def sni_target(sni: str, default_port: int = 443) -> Authority:
    """Where an SNI gateway routes: the Istio form gives host:port; a natural hostname gets `default_port`."""
    istio = parse_istio_sni(sni)
    if istio is not None:
        return istio.target
    return Authority.from_parts(sni, default_port)
