"""Two HTTP/2 engines driven in lock step: the native engine and the h2-backed one (the oracle).

`Twin` applies every received byte string and every command to both and requires the same outcome: the same
events (consecutive DATA events of one stream folded, as either engine may join them), the same error and GOAWAY
code, byte-identical output, and the same windows, stream states and peer settings afterwards. `PeerFrames`
builds what a peer might send, valid or not: every frame type, padding, priorities, CONTINUATION, bad lengths,
bad stream ids, window overflows and header blocks that break one rule each. Used by the differential unit
tests and the fuzz harness.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import hpack

from hbone.errors import ProtocolError
from hbone.net.h2 import api
from hbone.net.h2.engine import H2Engine
from hbone.net.h2.native_conn import NativeEngine
from hbone.net.settings import H2Settings

_HEADER = struct.Struct(">HBBBL")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

REQUEST = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080"), (b"traceparent", b"00-ab-cd-01")]
GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":path", b"/pkg.Svc/Call"),
    (b":authority", b"svc"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
RESPONSE = [(b":status", b"200")]


def frame(ftype: int, flags: int, sid: int, body: bytes) -> bytes:
    return _HEADER.pack(len(body) >> 8, len(body) & 0xFF, ftype, flags, sid) + body


def _events(events: list[api.Event]) -> list[tuple[Any, ...]]:
    """Comparable events; a run of DataReceived of one stream becomes one."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, api.DataReceived):
            if out and out[-1][0] == "data" and out[-1][1] == e.stream_id:
                out[-1] = ("data", e.stream_id, out[-1][2] + e.data, out[-1][3] + e.flow)
            else:
                out.append(("data", e.stream_id, bytes(e.data), e.flow))
            continue
        fields = tuple(
            [(bytes(n), bytes(v)) for n, v in value] if name == "headers" else value
            for name in sorted(_slots(type(e)))
            for value in [getattr(e, name)]
        )
        out.append((type(e).__name__, *fields))
    return out


def _wire(data: bytes, decoder: hpack.Decoder) -> list[tuple[Any, ...]]:
    """Output as frames, header blocks decoded: the engines' encoders may choose different HPACK
    representations (h2 indexes every field, ours not all), and so split blocks into CONTINUATION frames at
    different places."""
    out: list[tuple[Any, ...]] = []
    pos = 0
    if data.startswith(PREFACE):
        out.append(("preface",))
        pos = len(PREFACE)
    block: list[bytes] = []
    first = (0, 0)
    while pos < len(data):
        hi, lo, ftype, flags, sid = _HEADER.unpack_from(data, pos)
        body = data[pos + 9 : pos + 9 + ((hi << 8) | lo)]
        pos += 9 + len(body)
        if ftype == 1 or (ftype == 9 and block):
            if ftype == 1:
                first = (sid, flags & 0x1)
            block.append(body)
            if flags & 0x4:
                out.append(("HEADERS", *first, decoder.decode(b"".join(block), raw=True)))
                block = []
            continue
        out.append((ftype, flags, sid, body))
    assert not block, "a header block left unfinished"
    return out


def _slots(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__slots__", ()))
    return names


def _outcome(run: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        result = run()
    except api.StreamClosed as exc:
        return ("StreamClosed", str(type(exc)))
    except ProtocolError as exc:
        return ("ProtocolError", int(exc.h2_code))
    if isinstance(result, list):
        return ("ok", _events(result))
    return ("ok", result)


class Twin:
    """The native engine and the h2 engine, same role and settings, fed the same inputs."""

    def __init__(self, client: bool, settings: H2Settings | None = None) -> None:
        s = settings or (H2Settings.client() if client else H2Settings.server())
        self.client = client
        self.native = NativeEngine(client=client, settings=s)
        self.oracle = H2Engine(client=client, settings=s)
        self.failed = False
        self.sids: set[int] = set()
        self.log: list[str] = []  # what was done, for the failure message
        self._decoders = (hpack.Decoder(), hpack.Decoder())  # what each engine's peer would decode its blocks with
        self.both(lambda e: e.start())

    def both(self, op: Callable[[Any], Any]) -> tuple[Any, ...]:
        mine = _outcome(lambda: op(self.native))
        theirs = _outcome(lambda: op(self.oracle))
        assert mine == theirs, f"native {mine!r} != h2 {theirs!r} after:\n" + "\n".join(self.log[-12:])
        out_native, out_oracle = bytes(self.native.take_output()), bytes(self.oracle.take_output())
        wire_native, wire_oracle = _wire(out_native, self._decoders[0]), _wire(out_oracle, self._decoders[1])
        assert wire_native == wire_oracle, (
            "\n".join(self.log[-6:]) + f"\noutput differs:\n native {out_native.hex()}\n h2     {out_oracle.hex()}"
        )
        if mine[0] == "ProtocolError" and op.__name__ == "receive":
            self.failed = True
        else:
            self.compare_state()
        if mine[0] == "ok" and isinstance(mine[1], int):
            self.sids.add(mine[1])  # open_stream's id
        if mine[0] == "ok" and isinstance(mine[1], list):
            self.sids.update(e[-1] for e in mine[1] if e[0] in ("RequestReceived", "ResponseReceived"))
        return mine

    def receive(self, data: bytes, splits: list[int] | None = None) -> tuple[Any, ...]:
        """The same bytes to both; the native engine gets them cut at `splits` (h2 in one piece)."""
        cuts = sorted({c for c in splits or [] if 0 < c < len(data)})

        def receive(engine: Any) -> list[api.Event]:
            if engine is self.oracle or not cuts:
                return list(engine.receive(memoryview(data)))
            events: list[api.Event] = []
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                events += engine.receive(memoryview(bytearray(data[a:b])))
            return events

        self.log.append(f"receive {describe(data)}")
        return self.both(receive)

    def compare_state(self) -> None:
        n, o = self.native, self.oracle
        h2c = o._h2
        assert n.highest_inbound_stream_id == o.highest_inbound_stream_id
        assert n.max_send_frame == o.max_send_frame
        assert n.peer_max_concurrent_streams == o.peer_max_concurrent_streams
        assert n.peer_max_header_list_size == o.peer_max_header_list_size
        assert n.conn_send_window == h2c.outbound_flow_control_window
        assert n.recv_window.current == h2c._inbound_flow_control_window_manager.current_window_size
        for sid in sorted(_CANDIDATES | self.sids | set(h2c.streams)):
            if sid in n.streams:  # (h2 still answers for closed streams it has not pruned yet)
                assert n.send_window(sid) == o.send_window(sid), sid
            stream = h2c.streams.get(sid)
            theirs = (
                int(stream.state_machine.state) if stream is not None else (6 if sid in h2c._closed_streams else None)
            )
            assert n.stream_state(sid) == theirs, (
                f"stream {sid}: native {n.stream_state(sid)} h2 {theirs}\n" + "\n".join(self.log[-8:])
            )
            mine = n.streams.get(sid)
            if mine is not None and stream is not None:
                assert mine.recv_window == stream._inbound_window_manager.current_window_size, sid


_CANDIDATES = {1, 2, 3, 4, 5, 6, 7, 9, 11}


def started(client: bool, rng: random.Random) -> tuple[Twin, PeerFrames]:
    """A twin past the peer's side of the handshake (its preface when it is the client, then empty SETTINGS),
    and the frames that peer may send next."""
    twin = Twin(client=client)
    twin.receive((b"" if client else PREFACE) + frame(4, 0, 0, b""))
    return twin, PeerFrames(rng, engine_is_client=client)


def describe(data: bytes) -> str:
    """The frames in `data` as (type, flags, stream, length) (a trailing partial frame as its bytes)."""
    parts = []
    pos = len(PREFACE) if data.startswith(PREFACE) else 0
    while pos + 9 <= len(data):
        hi, lo, ftype, flags, sid = _HEADER.unpack_from(data, pos)
        size = (hi << 8) | lo
        parts.append(f"({ftype},{flags:#x},{sid},{size}:{data[pos + 9 : pos + 9 + min(size, 24)].hex()})")
        pos += 9 + size
    if pos < len(data):
        parts.append(f"rest {data[pos : pos + 24].hex()}")
    return " ".join(parts)


class PeerFrames:
    """Random frames a peer of the engine under test might send (the engine is `client` or not)."""

    def __init__(self, rng: random.Random, engine_is_client: bool) -> None:
        self.rng = rng
        self.client = engine_is_client
        self.encoder = hpack.Encoder()
        self.peer_sids = [1, 3, 5, 7] if not engine_is_client else [2, 4]
        self.own_sids = [1, 3, 5] if engine_is_client else [2, 4]

    def sid(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice(self.own_sids if self.client else self.peer_sids)
        if r < 0.8:
            return self.rng.choice(self.peer_sids + self.own_sids)
        return self.rng.choice([0, 9, 11, 2**31 - 1, 6])

    def block(self) -> bytes:
        rng = self.rng
        if self.client:
            base = rng.choice([RESPONSE, [(b":status", b"100")], [(b"grpc-status", b"0")], [*RESPONSE, (b"x", b"y")]])
        else:
            base = rng.choice([REQUEST, GRPC_REQUEST, [(b"grpc-status", b"0")]])
        headers = list(base)
        if rng.random() < 0.3:
            headers.append(rng.choice(_ODD_HEADERS))
        if rng.random() < 0.1:
            headers.insert(rng.randrange(len(headers) + 1), rng.choice(_ODD_HEADERS))
        encoded: bytes = self.encoder.encode(headers, huffman=rng.random() < 0.5)
        if rng.random() < 0.03:
            encoded += bytes([rng.randrange(256)])  # a broken block: the HPACK decoder must refuse it the same way
        return encoded

    def frames(self, count: int) -> bytes:
        return b"".join(self.one() for _ in range(count))

    def one(self) -> bytes:
        rng = self.rng
        kind = rng.choices(
            ["headers", "data", "window", "rst", "settings", "ping", "priority", "goaway", "cont", "other", "junk"],
            [20, 30, 10, 6, 5, 4, 3, 1, 4, 2, 2],
        )[0]
        sid = self.sid()
        if kind == "headers":
            block = self.block()
            flags = rng.choice([0x4, 0x5, 0x4, 0x5, 0x0, 0x25, 0xC, 0x24])
            body = block
            if flags & 0x20:
                body = struct.pack(">LB", rng.choice([0, 1, sid]), 15) + body
            if flags & 0x8:
                pad = rng.choice([0, 1, 4, 300 % 256])
                body = bytes([pad]) + body + bytes(pad)
            if not flags & 0x4:
                cut = rng.randrange(len(block) + 1)
                head = body[: len(body) - len(block)] + block[:cut] if not flags & 0x8 else body
                rest = b"" if flags & 0x8 else block[cut:]
                return frame(1, flags, sid, head) + frame(9, 0x4, sid if rng.random() < 0.9 else sid + 2, rest)
            return frame(1, flags, sid, body)
        if kind == "data":
            size = rng.choice([0, 1, 100, 1000, 16_384, 70_000])
            flags = rng.choice([0, 0, 0, 1, 8, 9])
            body = bytes(size % 251 for _ in range(1)) * size
            if flags & 0x8:
                pad = rng.choice([0, 3, 255])
                body = bytes([pad]) + body + bytes(min(pad, 10))
            return frame(0, flags, sid, body)
        if kind == "window":
            inc = rng.choice([1, 1000, 2**20, 2**31 - 1, 0, 2**31])
            return frame(8, 0, rng.choice([0, sid]), struct.pack(">L", inc % 2**32)[: rng.choice([4, 4, 4, 3])])
        if kind == "rst":
            return frame(3, 0, sid, struct.pack(">L", rng.choice([0, 8, 2, 99]))[: rng.choice([4, 4, 5])])
        if kind == "settings":
            pairs = [
                (rng.choice([1, 2, 3, 4, 5, 6, 8, 99]), rng.choice([0, 1, 100, 16_384, 2**20, 2**31])) for _ in range(3)
            ]
            body = b"".join(struct.pack(">HL", k, v % 2**32) for k, v in pairs)
            flags = 1 if rng.random() < 0.2 else 0
            return frame(4, flags, 0 if rng.random() < 0.95 else 1, b"" if flags and rng.random() < 0.8 else body)
        if kind == "ping":
            return frame(6, rng.choice([0, 1]), 0, bytes(rng.choice([8, 8, 7])))
        if kind == "priority":
            return frame(2, 0, sid, struct.pack(">LB", rng.choice([0, 1, sid]), 3)[: rng.choice([5, 5, 4])])
        if kind == "goaway":
            return frame(7, 0, 0, struct.pack(">LL", 1, 0) + b"bye")
        if kind == "cont":
            return frame(9, rng.choice([0, 4]), sid, self.block())
        if kind == "other":
            return frame(rng.choice([0xA, 0xB, 0x5, 0xFF]), 0, sid, bytes(rng.randrange(12)))
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))


_ODD_HEADERS = [
    (b"content-length", b"5"),
    (b"content-length", b"x"),
    (b"cookie", b"a=1"),
    (b"cookie", b"b=2 "),
    (b"connection", b"close"),
    (b"te", b"gzip"),
    (b"Upper", b"v"),
    (b":path", b""),
    (b":bogus", b"v"),
    (b"host", b"other"),
    (b"x", b" padded"),
    (b"x", b"a\x00b"),
    (b"", b"v"),
]
