"""Frame and header-block decoding for tools that read captured HTTP/2 bytes (`hbone.grpc.h2frames`).

Not the engine's receive path: no state machine, no flow control, nothing enforced. `parse_frame` turns one
complete frame (9-byte header + body) into a `ParsedFrame`; `HeaderBlockDecoder` decodes header blocks with one
HPACK context for a whole direction, as the receiving peer would. Malformed input raises `ValueError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hpack
from hyperframe import frame as hf

from hbone.errors import H2ErrorCode

FRAME_HEADER_SIZE = 9
_SETTING_NAMES = {
    1: "HEADER_TABLE_SIZE",
    2: "ENABLE_PUSH",
    3: "MAX_CONCURRENT_STREAMS",
    4: "INITIAL_WINDOW_SIZE",
    5: "MAX_FRAME_SIZE",
    6: "MAX_HEADER_LIST_SIZE",
    8: "ENABLE_CONNECT_PROTOCOL",
}


@dataclass(frozen=True, slots=True)
class ParsedFrame:
    """One frame: `kind` is its type name (DATA, HEADERS, ..., or `UNKNOWN(type=0x..)`), `flags` sorted names.

    `data`: a DATA payload (padding removed), a HEADERS/PUSH_PROMISE/CONTINUATION block fragment, or an unknown
    frame's body. `detail`: the fields of a control frame in words (for an unknown frame, its flag byte).
    """

    kind: str
    stream_id: int
    flags: tuple[str, ...]
    length: int
    data: bytes = b""
    pad_length: int | None = None
    promised_stream_id: int | None = None
    detail: str = ""

    @property
    def is_header_block(self) -> bool:
        """HEADERS or PUSH_PROMISE: starts a header block (CONTINUATION frames may follow)."""
        return self.kind in ("HEADERS", "PUSH_PROMISE")


def parse_frame(header: bytes, body: bytes) -> ParsedFrame:
    """Decode one frame from its 9 header bytes and its body; ValueError when it is malformed."""
    try:
        frame, length = hf.Frame.parse_frame_header(memoryview(header))
        frame.parse_body(memoryview(body))
    except Exception as exc:  # hyperframe's errors (and struct's) on hostile bytes
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    kind = type(frame).__name__.removesuffix("Frame").upper()
    flags = tuple(sorted(frame.flags))
    if isinstance(frame, hf.ExtensionFrame):
        kind = f"UNKNOWN(type={frame.type:#x})"
        return ParsedFrame(
            kind, frame.stream_id, flags, length, bytes(frame.body), detail=f"flag_byte={frame.flag_byte:#x}"
        )
    if isinstance(frame, hf.DataFrame):
        pad = frame.pad_length if "PADDED" in frame.flags else None
        return ParsedFrame(kind, frame.stream_id, flags, length, bytes(frame.data), pad_length=pad)
    if isinstance(frame, hf.HeadersFrame | hf.ContinuationFrame):
        return ParsedFrame(kind, frame.stream_id, flags, length, bytes(frame.data))
    if isinstance(frame, hf.PushPromiseFrame):
        promised = frame.promised_stream_id
        return ParsedFrame(kind, frame.stream_id, flags, length, bytes(frame.data), promised_stream_id=promised)
    return ParsedFrame(kind, frame.stream_id, flags, length, detail=_describe(frame))


class HeaderBlockDecoder:
    """HPACK decoding of the header blocks of one direction (the peer's SETTINGS are unknown: no size limits)."""

    def __init__(self) -> None:
        self._hpack = hpack.Decoder(max_header_list_size=1 << 30)
        self._hpack.max_allowed_table_size = 1 << 32

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of one complete header block (raw bytes); ValueError when it does not decode."""
        try:
            fields = self._hpack.decode(block, raw=True)
        except Exception as exc:  # hpack's errors on hostile bytes
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        return [(bytes(name), bytes(value)) for name, value in fields]


def error_code_name(value: int) -> str:
    try:
        return H2ErrorCode(value).name
    except ValueError:
        return f"{value:#x}"


def _describe(frame: Any) -> str:
    if isinstance(frame, hf.SettingsFrame):
        if "ACK" in frame.flags:
            return "ack"
        return " ".join(f"{_SETTING_NAMES.get(k, hex(k))}={v}" for k, v in frame.settings.items()) or "(empty)"
    if isinstance(frame, hf.WindowUpdateFrame):
        return f"increment={frame.window_increment}"
    if isinstance(frame, hf.PingFrame):
        return f"opaque={bytes(frame.opaque_data).hex()}"
    if isinstance(frame, hf.RstStreamFrame):
        return f"error={error_code_name(frame.error_code)}"
    if isinstance(frame, hf.GoAwayFrame):
        extra = f" debug={bytes(frame.additional_data)!r}" if frame.additional_data else ""
        return f"last_stream={frame.last_stream_id} error={error_code_name(frame.error_code)}{extra}"
    if isinstance(frame, hf.PriorityFrame):
        return f"depends_on={frame.depends_on} weight={frame.stream_weight} exclusive={frame.exclusive}"
    return ""
