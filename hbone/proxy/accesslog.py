"""One structured access-log record per tunnel (ztunnel logs one per connection, too).

Records go to the `hbone.access` logger as a single JSON line in the message and as `extra` fields, so both
plain log files and structured handlers get them (`hbone.logsetup` prints them as bare JSON lines).

This is also the one place tunnel accounting hooks in: sinks added with `add_sink` (the admin port's metrics and
open-connection table) hear `opened` once per record — when the tunnel is established (`established()`), or at
`finish()` for one refused before that — and `closed` at `finish()`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("hbone.access")


def _make_encoder() -> Callable[[dict[str, Any]], str]:
    """`json.JSONEncoder(separators=(",", ":")).encode`, the same text, without its per-call setup.

    `encode()` builds a new C encoder (and a dict of objects seen, for cycle checks) for every record; the one here
    is built once and has no cycle check (a record is a flat dict of strings, numbers and None). Python without
    the `_json` accelerator gets the plain encoder."""
    plain = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    encoder = make(None, plain.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(record: dict[str, Any]) -> str:
        return "".join(encoder(record, 0))

    return encode


_encode = _make_encoder()
_quote = json.encoder.encode_basestring_ascii
_quoted: dict[str | None, str] = {None: "null"}
_BIG = float(2**53)  # |duration| below this is finite, and written by repr() as json writes it


def _q(text: str | None) -> str:
    """JSON text of a string field whose values repeat (remembered; 4,096 values of up to 256 characters, then it
    starts over: the values are peer text, so the memo is bounded in bytes too)."""
    if text is None:
        return "null"
    quoted = _quoted.get(text)
    if quoted is None:
        if len(text) > 256:
            return _quote(text)
        if len(_quoted) >= 4096:
            _quoted.clear()
            _quoted[None] = "null"
        quoted = _quoted[text] = _quote(text)
    return quoted


def _q1(text: str | None) -> str:
    """JSON text of a string field that differs every time (the client's address and port)."""
    return "null" if text is None else _quote(text)


class AccessSink(Protocol):
    def opened(self, record: AccessRecord) -> None: ...

    def closed(self, record: AccessRecord) -> None: ...


_sinks: list[AccessSink] = []


def add_sink(sink: AccessSink) -> Callable[[], None]:
    """Hear every access record of this process from now on; returns the function that stops it."""
    _sinks.append(sink)

    def remove() -> None:
        if sink in _sinks:
            _sinks.remove(sink)

    return remove


class _ByteCounter(Protocol):
    bytes_in: int
    bytes_out: int


@dataclass(slots=True)
class AccessRecord:
    direction: str  # "inbound" | "outbound" | front-end name
    mode: str = "CONNECT"  # CONNECT | POST | SOCKS5 | ...
    src_identity: str | None = None
    dst_identity: str | None = None
    src_addr: str | None = None
    dst_addr: str | None = None  # the tunnel target (authority)
    bytes_sent: int = 0  # towards the destination
    bytes_received: int = 0  # back from the destination
    status: int = 0  # HBONE status code answered / received
    result: str = ""  # "ok", or why not
    policy: str | None = None
    request: str | None = None  # HTTP front ends: "METHOD host/path" of the one request this record is for
    closed_by: str | None = None  # relayed tunnels: the side whose end (EOF or failure) came first
    started: float = field(default_factory=time.monotonic)
    duration_ms: float = 0.0
    opened_at: float = field(default_factory=time.time)  # wall clock, for the admin view of open tunnels
    _live: _ByteCounter | None = None  # the tunnel stream while established: bytes so far, read live
    _live_inbound: bool = True
    _announced: bool = False

    def established(self, stream: object, *, inbound: bool) -> None:
        """The tunnel is up and relaying through `stream` (bytes counted live from its `bytes_in`/`bytes_out`;
        `inbound`: the stream's peer is the source, so bytes *in* go towards the destination)."""
        if hasattr(stream, "bytes_in") and hasattr(stream, "bytes_out"):
            self._live, self._live_inbound = stream, inbound
        if not self._announced:
            self._announced = True
            for sink in _sinks:
                sink.opened(self)

    def live_bytes(self) -> tuple[int, int]:
        """(towards the destination, back from it) so far."""
        live = self._live
        if live is None:
            return self.bytes_sent, self.bytes_received
        return (live.bytes_in, live.bytes_out) if self._live_inbound else (live.bytes_out, live.bytes_in)

    def finish(self, status: int, result: str) -> None:
        """Close the record (once: `hbone.proxy.guard.TunnelGuard` calls it). Byte counts nobody set are taken
        from the live stream (a tunnel that broke or was cancelled mid-relay)."""
        if self._live is not None and not (self.bytes_sent or self.bytes_received):
            self.bytes_sent, self.bytes_received = self.live_bytes()
        self.status = status
        self.result = result
        self.duration_ms = round((time.monotonic() - self.started) * 1000, 3)
        if _sinks:
            if not self._announced:
                self._announced = True
                for sink in _sinks:
                    sink.opened(self)
            for sink in _sinks:
                sink.closed(self)
        self._live = None
        # Tunnel churn profile: asdict()'s recursive deep copy was ~9% of the server's per-tunnel CPU. Build the
        # flat dict directly, and only when someone will see it.
        if log.isEnabledFor(logging.INFO):
            write = _sole_writer()
            if write is not None and write(self.json()):
                return
            record = self.as_dict()
            log.info(_encode(record), extra={"access": record})

    def json(self) -> str:
        """`as_dict()` as one JSON object, the text `json.dumps(..., separators=(",", ":"))` writes (a test compares
        them). Written field by field, the strings that repeat from tunnel to tunnel (identities, targets, results)
        quoted once: the generic encoder was ~6% of `hbone serve`'s instructions per tunnel."""
        sent, received, status, ms = self.bytes_sent, self.bytes_received, self.status, self.duration_ms
        if not (int is type(sent) is type(received) is type(status) and type(ms) is float and -_BIG < ms < _BIG):
            return _encode(self.as_dict())  # anything unusual (a bool, NaN): json's own rules
        q = _quoted.get  # a remembered string (or None) costs one dict lookup; `_q` quotes and remembers the rest
        try:
            return (
                f'{{"direction":{q(self.direction) or _q(self.direction)},"mode":{q(self.mode) or _q(self.mode)},'
                f'"src_identity":{q(self.src_identity) or _q(self.src_identity)},'
                f'"dst_identity":{q(self.dst_identity) or _q(self.dst_identity)},"src_addr":{_q1(self.src_addr)},'
                f'"dst_addr":{q(self.dst_addr) or _q(self.dst_addr)},"bytes_sent":{sent},'
                f'"bytes_received":{received},"status":{status},"result":{q(self.result) or _q(self.result)},'
                f'"policy":{q(self.policy) or _q(self.policy)},"request":{q(self.request) or _q(self.request)},'
                f'"closed_by":{q(self.closed_by) or _q(self.closed_by)},"duration_ms":{ms!r}}}'
            )
        except TypeError:  # a field that is not a string
            return _encode(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The logged fields (every field but the monotonic start time), in declaration order."""
        return {
            "direction": self.direction,
            "mode": self.mode,
            "src_identity": self.src_identity,
            "dst_identity": self.dst_identity,
            "src_addr": self.src_addr,
            "dst_addr": self.dst_addr,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "status": self.status,
            "result": self.result,
            "policy": self.policy,
            "request": self.request,
            "closed_by": self.closed_by,
            "duration_ms": self.duration_ms,
        }


def _sole_writer() -> Callable[[str], bool] | None:
    """The `write_access` of the one handler our records would reach, if it has one (`hbone.logsetup`'s, as the
    CLI sets it up): it writes the same line without a `LogRecord`. None when the records go anywhere else too (an
    embedding application's handlers, pytest's capture, a filter on our logger), so those see every record as
    before."""
    if log.filters:
        return None
    found: list[logging.Handler] = []
    node: logging.Logger | None = log
    while node is not None:
        found += node.handlers
        if len(found) > 1 or not node.propagate:
            break
        node = node.parent
    if len(found) != 1:
        return None
    write: Callable[[str], bool] | None = getattr(found[0], "write_access", None)
    return write
