"""HBONE request/response headers: build on the client, validate on the server.

CONNECT mode is RFC 9113 §8.5 exactly as ztunnel sends it (src/proxy/outbound.rs): `:method CONNECT`,
`:authority`, then `baggage`, `forwarded`, `traceparent` (and `x-forwarded-network` on the inner CONNECT of
double HBONE); no `:scheme`, `:path` or `:protocol`. POST mode (Envoy `tunneling_config.use_post`) is a normal
request to the proxy with the real target in `x-tun`. Headers are (name, value) pairs as the h2 library yields
them: str or bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hbone.errors import BadRequest, ProtocolError
from hbone.wire.authority import Authority, InvalidAuthority, parse_authority
from hbone.wire.baggage import PeerMetadata, decode_baggage, encode_baggage
from hbone.wire.forwarded import ForwardedElement, forwarded_value, parse_forwarded
from hbone.wire.tracecontext import InvalidTraceParent, TraceParent

HeaderPair = tuple[str, str]
RawHeader = tuple[str | bytes, str | bytes]

# RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})
_NAME_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
MAX_HEADERS = 128


class TunnelMode(enum.Enum):
    CONNECT = "CONNECT"
    POST = "POST"


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """A validated HBONE request. Telemetry fields are None when absent (or invalid, in lenient mode)."""

    mode: TunnelMode
    target: Authority
    authority: str  # the raw :authority (the proxy host in POST mode)
    path: str | None = None
    baggage: Mapping[str, str] = field(default_factory=dict)
    forwarded: tuple[ForwardedElement, ...] = ()
    forwarded_for: str | None = None  # the first element's `for` node, e.g. "10.0.0.1:4000" or "[::1]:4000"
    forwarded_host: str | None = None  # the first element's `host`, the destination service for telemetry
    forwarded_network: str | None = None  # `x-forwarded-network`, set only on an inner double-HBONE CONNECT
    traceparent: TraceParent | None = None
    headers: tuple[HeaderPair, ...] = ()  # every regular header, in order
    warnings: tuple[str, ...] = ()  # telemetry headers dropped in lenient mode, with the reason

    @property
    def peer(self) -> PeerMetadata:
        return PeerMetadata.from_baggage(self.baggage)


def _telemetry(
    baggage: PeerMetadata | Mapping[str, str] | str | None,
    forwarded_for: Authority | str | None,
    forwarded_host: str | None,
    traceparent: TraceParent | str | None,
    forwarded_network: str | None,
) -> list[HeaderPair]:
    out: list[HeaderPair] = []
    if baggage is not None:
        if isinstance(baggage, PeerMetadata):
            text = baggage.to_baggage()
        elif isinstance(baggage, str):
            decode_baggage(baggage)  # validate what the caller pre-encoded
            text = baggage
        else:
            text = encode_baggage(baggage)
        if text:
            out.append(("baggage", text))
    if forwarded_for is not None or forwarded_host is not None:
        out.append(("forwarded", forwarded_value(forwarded_for, forwarded_host)))
    if traceparent is not None:
        tp = traceparent if isinstance(traceparent, TraceParent) else TraceParent.parse(traceparent)
        out.append(("traceparent", str(tp)))
    if forwarded_network is not None:
        out.append(("x-forwarded-network", _check_value("x-forwarded-network", forwarded_network)))
    return out


def connect_request(
    authority: Authority | str,
    *,
    baggage: PeerMetadata | Mapping[str, str] | str | None = None,
    forwarded_for: Authority | str | None = None,
    forwarded_host: str | None = None,
    traceparent: TraceParent | str | None = None,
    forwarded_network: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> list[HeaderPair]:
    """Headers of an HBONE CONNECT (RFC 9113 §8.5), in ztunnel's order."""
    target = authority if isinstance(authority, Authority) else parse_authority(authority)
    headers = [(":method", "CONNECT"), (":authority", str(target))]
    headers += _telemetry(baggage, forwarded_for, forwarded_host, traceparent, forwarded_network)
    headers += _check_extra(extra)
    return headers


def post_request(
    target: Authority | str,
    proxy_authority: str,
    path: str = "/",
    *,
    baggage: PeerMetadata | Mapping[str, str] | str | None = None,
    forwarded_for: Authority | str | None = None,
    forwarded_host: str | None = None,
    traceparent: TraceParent | str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> list[HeaderPair]:
    """Headers of a POST-mode tunnel: a request to the proxy carrying `x-tun: <target>` (RFC 9113 §8.3.1)."""
    tgt = target if isinstance(target, Authority) else parse_authority(target)
    proxy = _proxy_authority(proxy_authority)
    if not path.startswith("/"):
        raise BadRequest(f"POST tunnel :path {path!r} must start with '/'")
    _check_value(":path", path)
    headers = [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", proxy)]
    headers.append(("x-tun", str(tgt)))
    headers += _telemetry(baggage, forwarded_for, forwarded_host, traceparent, None)
    headers += _check_extra(extra)
    return headers


def _proxy_authority(text: str) -> str:
    """The proxy's `:authority`: `host` or `host:port` (RFC 9113 §8.3.1), validated like a target."""
    if ":" in text and not text.endswith("]"):
        return str(parse_authority(text))
    if not text:
        raise InvalidAuthority("proxy authority is empty")
    try:
        return str(parse_authority(f"{text}:443")).rsplit(":", 1)[0]
    except InvalidAuthority:
        raise InvalidAuthority(f"proxy authority {text!r} is not a valid host") from None


def _check_extra(extra: Iterable[tuple[str, str]]) -> list[HeaderPair]:
    out = []
    for name, value in extra:
        _check_name(name)
        if name.startswith(":"):
            raise BadRequest(f"extra header {name!r}: pseudo-headers are set by the builder")
        out.append((name, _check_value(name, value)))
    return out


def _check_name(name: str) -> None:
    """RFC 9113 §8.2.1: lowercase field names; §8.2.2: no connection-specific fields."""
    bare = name[1:] if name.startswith(":") else name
    # issuperset runs in C; a per-character generator was most of parse_tunnel_request's ~7% of churn CPU
    if not bare or not _NAME_CHARS.issuperset(bare):
        raise BadRequest(f"header name {name!r} must be a lowercase token (RFC 9113 §8.2.1)")
    if name in _CONNECTION_SPECIFIC:
        raise BadRequest(f"header {name!r} is connection-specific and not allowed in HTTP/2 (RFC 9113 §8.2.2)")


def _check_value(name: str, value: str) -> str:
    """RFC 9113 §8.2.1: no NUL, CR or LF; no leading or trailing whitespace."""
    if "\x00" in value or "\r" in value or "\n" in value:  # substring tests run in C (tunnel churn profile)
        ch = next(c for c in value if c in "\x00\r\n")
        raise BadRequest(f"header {name!r} value contains forbidden character {ch!r}")
    if value != value.strip(" \t"):
        raise BadRequest(f"header {name!r} value has leading or trailing whitespace")
    return value


def _text(value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        # RFC 9110 §5.5: obs-text is opaque; latin-1 keeps every byte without guessing an encoding.
        return value.decode("latin-1")


_PARSED: dict[tuple[bool, tuple[RawHeader, ...]], TunnelRequest | None] = {}
#: Header lists longer than this (names + values) are not remembered: the keys are peer text, so the memo is
#: bounded in bytes (1,024 x 2 KiB), not only in entries. A real CONNECT is a few hundred bytes.
_MAX_REMEMBERED = 2048
_TRACEPARENT = (b"traceparent", "traceparent")


def parse_tunnel_request(headers: Iterable[RawHeader], *, strict_telemetry: bool = False) -> TunnelRequest:
    """Validate a server-side HBONE request and return what it asks for; raise `BadRequest` (→ 400).

    Telemetry (baggage, forwarded, traceparent) never decides routing, so by default a malformed value is dropped
    with a warning like ztunnel does; `strict_telemetry=True` rejects it instead.
    """
    fields = headers if isinstance(headers, list | tuple) else list(headers)
    # A client's requests to one target differ only in the traceparent, random per tunnel and sent last (ztunnel's
    # order, and ours): the rest is checked once and remembered (~10 us of `hbone serve`'s CPU per tunnel).
    if not fields or len(fields) > MAX_HEADERS or fields[-1][0] not in _TRACEPARENT:
        return _parse(fields, strict_telemetry)
    key = (strict_telemetry, tuple(fields[:-1]))
    if key not in _PARSED:  # remembered as None when it holds a traceparent too: the full check decides
        try:
            parsed = _parse(key[1], strict_telemetry)
        except ProtocolError:
            return _parse(fields, strict_telemetry)  # raises the error the full check names first
        if sum(len(name) + len(value) for name, value in key[1]) > _MAX_REMEMBERED:
            return _parse(fields, strict_telemetry)  # a peer's big header lists are never kept
        if len(_PARSED) >= 1024:
            _PARSED.clear()
        _PARSED[key] = None if any(name == "traceparent" for name, _ in parsed.headers) else parsed
    if (base := _PARSED[key]) is None:
        return _parse(fields, strict_telemetry)
    try:
        value = _text(fields[-1][1])
        _check_value("traceparent", value)
        traceparent, warnings = TraceParent.parse(value), base.warnings
    except InvalidTraceParent as exc:
        if strict_telemetry:
            raise
        traceparent, warnings = None, (*base.warnings, str(exc))
    except BadRequest:
        return _parse(fields, strict_telemetry)
    return TunnelRequest(
        base.mode, base.target, base.authority, base.path, dict(base.baggage), base.forwarded, base.forwarded_for,
        base.forwarded_host, base.forwarded_network, traceparent, (*base.headers, ("traceparent", value)), warnings,
    )  # fmt: skip


def _parse(headers: Iterable[RawHeader], strict_telemetry: bool) -> TunnelRequest:
    pseudo: dict[str, str] = {}
    regular: list[HeaderPair] = []
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        _check_name(name)
        _check_value(name, value)
        if len(regular) + len(pseudo) >= MAX_HEADERS:
            raise BadRequest(f"request has more than {MAX_HEADERS} header fields")
        if name.startswith(":"):
            if regular:
                raise BadRequest(f"pseudo-header {name!r} after a regular header (RFC 9113 §8.3)")
            if name not in _REQUEST_PSEUDO:
                raise BadRequest(f"unknown request pseudo-header {name!r} (RFC 9113 §8.3.1)")
            if name in pseudo:
                raise BadRequest(f"duplicate pseudo-header {name!r} (RFC 9113 §8.3)")
            pseudo[name] = value
        else:
            if name == "te" and value.lower() != "trailers":
                raise BadRequest(f"header 'te: {value}' is not allowed in HTTP/2; only 'trailers' (RFC 9113 §8.2.2)")
            regular.append((name, value))
    method = pseudo.get(":method")
    if method is None:
        raise BadRequest("request has no :method pseudo-header")
    if method == "CONNECT":
        mode, target, path = TunnelMode.CONNECT, _connect_target(pseudo), None
    elif method == "POST":
        mode, path = TunnelMode.POST, pseudo.get(":path")
        target = _post_target(pseudo, regular)
    else:
        raise BadRequest(f"method {method!r} cannot open a tunnel; expected CONNECT or POST")
    warnings: list[str] = []

    def lenient(exc: ProtocolError) -> None:
        if strict_telemetry:
            raise exc
        warnings.append(str(exc))

    baggage: dict[str, str] = {}
    lines = [v for k, v in regular if k == "baggage"]
    if lines:
        try:
            baggage = decode_baggage(lines)
        except ProtocolError as exc:
            lenient(exc)
    forwarded: tuple[ForwardedElement, ...] = ()
    lines = [v for k, v in regular if k == "forwarded"]
    if lines:
        try:
            forwarded = tuple(parse_forwarded(lines))
        except ProtocolError as exc:
            lenient(exc)
    traceparent = None
    lines = [v for k, v in regular if k == "traceparent"]
    if len(lines) > 1:
        lenient(BadRequest(f"request has {len(lines)} traceparent headers; expected one (W3C Trace Context §3.2)"))
    elif lines:
        try:
            traceparent = TraceParent.parse(lines[0])
        except ProtocolError as exc:
            lenient(exc)
    network = [v for k, v in regular if k == "x-forwarded-network"]
    if len(network) > 1:
        raise BadRequest("request has more than one x-forwarded-network header")
    return TunnelRequest(
        mode=mode,
        target=target,
        authority=pseudo.get(":authority", ""),
        path=path,
        baggage=baggage,
        forwarded=forwarded,
        forwarded_for=forwarded[0].for_ if forwarded else None,
        forwarded_host=forwarded[0].host if forwarded else None,
        forwarded_network=network[0] if network else None,
        traceparent=traceparent,
        headers=tuple(regular),
        warnings=tuple(warnings),
    )


_AUTHORITIES: dict[str, Authority] = {}  # fast path: every text here was fully validated by parse_authority once


def cached_authority(text: str) -> Authority:
    """`parse_authority`, remembering valid results: a pooled client sends the same few targets again and again
    (parse_authority's per-character checks were ~2% of churn CPU on each side). Authority is immutable; invalid
    texts are never cached and raise every time."""
    hit = _AUTHORITIES.get(text)
    if hit is not None:
        return hit
    authority = parse_authority(text)
    if len(_AUTHORITIES) >= 4096:  # bounded: a scan of many targets just starts over
        _AUTHORITIES.clear()
    _AUTHORITIES[text] = authority
    return authority


def _connect_target(pseudo: Mapping[str, str]) -> Authority:
    for name in (":scheme", ":path"):
        if name in pseudo:
            raise BadRequest(f"CONNECT request must omit {name} (RFC 9113 §8.5)")
    if ":protocol" in pseudo:
        raise BadRequest(f"extended CONNECT (:protocol {pseudo[':protocol']!r}) is not an HBONE tunnel (RFC 8441)")
    authority = pseudo.get(":authority")
    if authority is None:
        raise BadRequest("CONNECT request has no :authority (RFC 9113 §8.5)")
    return cached_authority(authority)


def _post_target(pseudo: Mapping[str, str], regular: Sequence[HeaderPair]) -> Authority:
    if ":protocol" in pseudo:
        raise BadRequest("POST request must not carry :protocol (RFC 8441 §4)")
    for name in (":scheme", ":path"):
        if not pseudo.get(name):
            raise BadRequest(f"POST tunnel request has no {name} (RFC 9113 §8.3.1)")
    if ":authority" not in pseudo and not any(k == "host" for k, _ in regular):
        raise BadRequest("POST tunnel request has neither :authority nor host (RFC 9113 §8.3.1)")
    tun = [v for k, v in regular if k == "x-tun"]
    if not tun:
        raise BadRequest("POST tunnel request has no x-tun header naming the target")
    if len(tun) > 1:
        raise BadRequest(f"POST tunnel request has {len(tun)} x-tun headers; expected one")
    return cached_authority(tun[0])


# --- responses --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelResponse:
    """The client's view of the HBONE response: any status but 200 is a failure (ztunnel outbound.rs)."""

    status: int
    peer: PeerMetadata | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def response_baggage(peer: PeerMetadata | None) -> list[HeaderPair]:
    """The `baggage` header describing the destination, as ENABLE_RESPONSE_BAGGAGE adds (empty if nothing known)."""
    if peer is None or peer.is_empty():
        return []
    return [("baggage", peer.to_baggage())]


def tunnel_response(status: int, *, peer: PeerMetadata | None = None) -> list[HeaderPair]:
    """Response headers; baggage only on 200 (ztunnel sends it after the upstream connect succeeded)."""
    if not 100 <= status <= 599:
        raise BadRequest(f"HTTP status {status} is out of range 100..599")
    headers = [(":status", str(status))]
    if status == 200:
        headers += response_baggage(peer)
    return headers


def parse_tunnel_response(headers: Iterable[RawHeader]) -> TunnelResponse:
    """Read `:status` (RFC 9113 §8.3.2) and response baggage (lenient: bad baggage gives peer None)."""
    status: int | None = None
    lines: list[str] = []
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        if name == ":status":
            if status is not None:
                raise ProtocolError("response has a duplicate :status (RFC 9113 §8.3)")
            if len(value) != 3 or not (value.isascii() and value.isdigit()):  # ASCII digits only (not '²')
                raise ProtocolError(f"response :status {value!r} is not a 3-digit code (RFC 9113 §8.3.2)")
            status = int(value)
        elif name == "baggage":
            lines.append(value)
    if status is None:
        raise ProtocolError("response has no :status (RFC 9113 §8.3.2)")
    peer = None
    if lines:
        try:
            peer = PeerMetadata.from_baggage(lines)
        except ProtocolError:
            peer = None
    return TunnelResponse(status, peer)
