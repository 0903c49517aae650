"""Debugging decoder for captured HTTP/2 byte streams, with gRPC messages extracted per stream.

Feed it one direction of a connection: the client's bytes (starting with the RFC 9113 §3.4 connection preface)
or the server's (no preface). Frames are parsed with ``hyperframe`` and header blocks decoded with one ``hpack``
decoder for the whole direction, as the receiving peer would. On streams whose headers say ``content-type:
application/grpc*``, DATA payloads go through `MessageDecoder` (PROTOCOL-HTTP2.md "Length-Prefixed-Message")
and the messages are shown as hex, or as text format when a protobuf class is given.

It never raises on bad input: the first undecodable frame is reported with its offset and decoding stops, since
framing and HPACK state cannot be trusted past that point. Not for production paths (it keeps whole payloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import hpack
from hyperframe import frame as hf

import hbone.net  # noqa: F401 - checks the h2/hyperframe/hpack versions before they are used
from hbone.errors import H2ErrorCode, HboneError
from hbone.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder
from hbone.grpc.metadata import header_text, is_grpc_content_type
from hbone.grpc.status import parse_trailers

__all__ = ["CLIENT_PREFACE", "FrameRecord", "GrpcMessage", "H2Decoder", "dump", "format_record"]

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER = 9
_SETTING_NAMES = {
    1: "HEADER_TABLE_SIZE",
    2: "ENABLE_PUSH",
    3: "MAX_CONCURRENT_STREAMS",
    4: "INITIAL_WINDOW_SIZE",
    5: "MAX_FRAME_SIZE",
    6: "MAX_HEADER_LIST_SIZE",
    8: "ENABLE_CONNECT_PROTOCOL",
}


@dataclass(frozen=True)
class GrpcMessage:
    """One gRPC message found on a stream; ``text`` is its protobuf text form when a class was given."""

    stream_id: int
    index: int
    data: bytes
    text: str | None = None


@dataclass(frozen=True)
class FrameRecord:
    """One decoded frame (or the preface, or an error) and what it carried."""

    offset: int
    kind: str
    stream_id: int = 0
    flags: tuple[str, ...] = ()
    length: int = 0
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    messages: tuple[GrpcMessage, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class _Stream:
    grpc: bool = False
    decoder: MessageDecoder | None = None
    count: int = 0
    broken: bool = False


@dataclass
class _Block:
    """A header block waiting for its CONTINUATION frames."""

    stream_id: int
    fragments: list[bytes] = field(default_factory=list)
    end_stream: bool = False


class H2Decoder:
    """Incremental: ``feed`` chunks of one direction, ``close`` at the end of the capture."""

    def __init__(
        self,
        *,
        server: bool = False,
        message_class: Any = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._expect_preface = not server
        self._message_class = message_class
        self._max = max_message_size
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._hpack = hpack.Decoder(max_header_list_size=1 << 30)
        # The peer's SETTINGS (the other direction) bound the table; we cannot see them, so allow any size.
        self._hpack.max_allowed_table_size = 1 << 32
        self._streams: dict[int, _Stream] = {}
        self._block: _Block | None = None
        self.failed = False

    def feed(self, data: bytes) -> list[FrameRecord]:
        if self.failed:
            return []
        self._buf += data
        out: list[FrameRecord] = []
        if self._expect_preface:
            if len(self._buf) < len(CLIENT_PREFACE) and CLIENT_PREFACE.startswith(self._buf):
                return out
            self._expect_preface = False
            if self._buf.startswith(CLIENT_PREFACE):
                out.append(FrameRecord(0, "PREFACE", detail="client connection preface"))
                self._consume(len(CLIENT_PREFACE))
            else:
                out.append(FrameRecord(0, "NOTE", detail="no client preface; decoding as server-to-client bytes"))
        while len(self._buf) >= _FRAME_HEADER:
            length = int.from_bytes(self._buf[:3], "big")
            if len(self._buf) < _FRAME_HEADER + length:
                break
            offset = self._offset
            header = bytes(self._buf[:_FRAME_HEADER])
            body = bytes(self._buf[_FRAME_HEADER : _FRAME_HEADER + length])
            self._consume(_FRAME_HEADER + length)
            try:
                out.append(self._frame(offset, header, body))
            except Exception as exc:  # a foreign library on hostile bytes: report, never propagate
                self.failed = True
                out.append(FrameRecord(offset, "ERROR", detail=f"decoding failed at offset {offset}: {exc!r}"))
                break
        return out

    def close(self) -> list[FrameRecord]:
        """Report what the capture left unfinished."""
        out: list[FrameRecord] = []
        if self.failed:
            return out
        if self._buf:
            need = _FRAME_HEADER + int.from_bytes(self._buf[:3], "big") if len(self._buf) >= 3 else _FRAME_HEADER
            out.append(
                FrameRecord(
                    self._offset, "ERROR", detail=f"capture ends inside a frame ({len(self._buf)} of {need} bytes)"
                )
            )
        if self._block is not None:
            out.append(FrameRecord(self._offset, "ERROR", detail="capture ends inside a header block"))
        for sid, st in self._streams.items():
            if st.decoder is not None and st.decoder.pending_bytes and not st.broken:
                note = f"stream {sid}: {st.decoder.pending_bytes} bytes of an unfinished gRPC message"
                out.append(FrameRecord(self._offset, "NOTE", stream_id=sid, detail=note))
        return out

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _frame(self, offset: int, header: bytes, body: bytes) -> FrameRecord:
        frame, length = hf.Frame.parse_frame_header(memoryview(header))
        frame.parse_body(memoryview(body))
        kind = type(frame).__name__.removesuffix("Frame").upper()
        if isinstance(frame, hf.ExtensionFrame):
            kind = f"UNKNOWN(type={frame.type:#x})"
        flags = tuple(sorted(frame.flags))
        base = FrameRecord(offset, kind, frame.stream_id, flags, length)
        if self._block is not None and not isinstance(frame, hf.ContinuationFrame):
            raise ValueError(f"{kind} frame while a header block on stream {self._block.stream_id} awaits CONTINUATION")
        if isinstance(frame, hf.HeadersFrame | hf.PushPromiseFrame):
            self._block = _Block(frame.stream_id, [bytes(frame.data)], "END_STREAM" in frame.flags)
            detail = f"promised_stream={frame.promised_stream_id}" if isinstance(frame, hf.PushPromiseFrame) else ""
            return self._maybe_end_block(base, frame, detail)
        if isinstance(frame, hf.ContinuationFrame):
            if self._block is None or self._block.stream_id != frame.stream_id:
                raise ValueError("CONTINUATION without a header block to continue")
            self._block.fragments.append(bytes(frame.data))
            return self._maybe_end_block(base, frame, "")
        if isinstance(frame, hf.DataFrame):
            return self._data(base, frame)
        return replace(base, detail=_describe(frame))

    def _maybe_end_block(self, base: FrameRecord, frame: Any, detail: str) -> FrameRecord:
        block = self._block
        if block is None or "END_HEADERS" not in frame.flags:
            return replace(base, detail=detail or "header block continues")
        self._block = None
        raw = self._hpack.decode(b"".join(block.fragments), raw=True)
        headers = tuple((header_text(k), header_text(v)) for k, v in raw)
        notes: list[str] = []
        st = self._streams.setdefault(block.stream_id, _Stream())
        fields = dict(headers)
        if not st.grpc and is_grpc_content_type(fields.get("content-type", "")):
            st.grpc = True
            try:
                st.decoder = MessageDecoder(self._max, fields.get("grpc-encoding"))
            except HboneError as exc:
                st.broken = True
                notes.append(f"gRPC messages not decoded: {exc}")
        if "grpc-status" in fields:
            status, _ = parse_trailers(headers)
            notes.append(f"gRPC status {status.code.name}" + (f": {status.message}" if status.message else ""))
        if block.end_stream:
            notes += self._end_stream(block.stream_id)
        return replace(base, detail=detail, headers=headers, notes=tuple(notes))

    def _data(self, base: FrameRecord, frame: hf.DataFrame) -> FrameRecord:
        st = self._streams.setdefault(frame.stream_id, _Stream())
        payload = bytes(frame.data)
        detail = f"payload={len(payload)}" + (f" pad={frame.pad_length}" if "PADDED" in frame.flags else "")
        msgs: list[GrpcMessage] = []
        notes: list[str] = []
        if st.decoder is not None and not st.broken:
            try:
                for data in st.decoder.feed(payload):
                    st.count += 1
                    msgs.append(GrpcMessage(frame.stream_id, st.count, data, self._pretty(data)))
            except HboneError as exc:
                st.broken = True
                notes.append(f"gRPC framing error: {exc}")
        elif not st.grpc:
            detail += f" {_hex(payload, 32)}"
        if "END_STREAM" in frame.flags:
            notes += self._end_stream(frame.stream_id)
        return replace(base, detail=detail, messages=tuple(msgs), notes=tuple(notes))

    def _end_stream(self, stream_id: int) -> list[str]:
        st = self._streams.get(stream_id)
        if st is None or st.decoder is None or st.broken:
            return []
        try:
            st.decoder.close()
        except HboneError as exc:
            st.broken = True
            return [f"gRPC framing error at END_STREAM: {exc}"]
        return []

    def _pretty(self, data: bytes) -> str | None:
        if self._message_class is None:
            return None
        from google.protobuf import text_format

        try:
            msg = self._message_class.FromString(data)
        except Exception as exc:  # DecodeError and friends from upb
            return f"<not a {self._message_class.__name__}: {exc}>"
        return str(text_format.MessageToString(msg, as_one_line=True))


def _hex(data: bytes, limit: int) -> str:
    if limit <= 0 or len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}...(+{len(data) - limit} bytes)"


def _code(value: int) -> str:
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
        return f"error={_code(frame.error_code)}"
    if isinstance(frame, hf.GoAwayFrame):
        extra = f" debug={bytes(frame.additional_data)!r}" if frame.additional_data else ""
        return f"last_stream={frame.last_stream_id} error={_code(frame.error_code)}{extra}"
    if isinstance(frame, hf.PriorityFrame):
        return f"depends_on={frame.depends_on} weight={frame.stream_weight} exclusive={frame.exclusive}"
    if isinstance(frame, hf.ExtensionFrame):
        return f"flag_byte={frame.flag_byte:#x} body={_hex(bytes(frame.body), 32)}"
    return ""


def format_record(rec: FrameRecord, *, hex_limit: int = 64) -> list[str]:
    """Human-readable lines for one record: a summary line, then indented headers, messages and notes."""
    if rec.kind in ("PREFACE", "NOTE", "ERROR"):
        lines = [f"@{rec.offset:<8} {rec.kind} {rec.detail}"]
    else:
        flags = "|".join(rec.flags) or "-"
        head = f"@{rec.offset:<8} {rec.kind} stream={rec.stream_id} flags={flags} len={rec.length}"
        lines = [f"{head} {rec.detail}".rstrip()]
    lines += [f"    {k}: {v!r}" if not v.isprintable() else f"    {k}: {v}" for k, v in rec.headers]
    for m in rec.messages:
        lines.append(f"    grpc message #{m.index}: {len(m.data)} bytes {_hex(m.data, hex_limit)}".rstrip())
        if m.text is not None:
            lines.append(f"      = {m.text}")
    lines += [f"    ! {n}" for n in rec.notes]
    return lines


def dump(
    data: bytes,
    *,
    server: bool = False,
    message_class: Any = None,
    hex_limit: int = 64,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> list[str]:
    """Decode a whole capture into lines (what ``tools/h2dump.py`` prints)."""
    dec = H2Decoder(server=server, message_class=message_class, max_message_size=max_message_size)
    records = dec.feed(data) + dec.close()
    return [line for rec in records for line in format_record(rec, hex_limit=hex_limit)]
