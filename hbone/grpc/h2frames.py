"""Debugging decoder for captured HTTP/2 byte streams, with gRPC messages extracted per stream.

Feed it one direction of a connection: the client's bytes (starting with the RFC 9113 §3.4 connection preface)
or the server's (no preface). Frames are parsed and header blocks decoded (one HPACK context for the whole direction,
as the receiving peer would) by `hbone.net.h2.frames`. On streams whose headers say ``content-type:
application/grpc*``, DATA payloads go through `MessageDecoder` (PROTOCOL-HTTP2.md "Length-Prefixed-Message")
and the messages are shown as hex, or as text format when a protobuf class is given.

It never raises on bad input: the first undecodable frame is reported with its offset and decoding stops, since
framing and HPACK state cannot be trusted past that point. Not for production paths (it keeps whole payloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hbone.errors import HboneError
from hbone.grpc.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder
from hbone.grpc.metadata import header_text, is_grpc_content_type
from hbone.grpc.status import parse_trailers
from hbone.net.h2.frames import FRAME_HEADER_SIZE as _FRAME_HEADER
from hbone.net.h2.frames import HeaderBlockDecoder, ParsedFrame, parse_frame

__all__ = ["CLIENT_PREFACE", "FrameRecord", "GrpcMessage", "H2Decoder", "dump", "format_record"]

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


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
        # The peer's SETTINGS (the other direction) bound the table; we cannot see them, so allow any size.
        self._hpack = HeaderBlockDecoder()
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
            except ValueError as exc:  # hostile bytes: report, never propagate
                self.failed = True
                out.append(FrameRecord(offset, "ERROR", detail=f"decoding failed at offset {offset}: {exc}"))
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
        frame = parse_frame(header, body)
        base = FrameRecord(offset, frame.kind, frame.stream_id, frame.flags, frame.length)
        if self._block is not None and frame.kind != "CONTINUATION":
            raise ValueError(
                f"{frame.kind} frame while a header block on stream {self._block.stream_id} awaits CONTINUATION"
            )
        if frame.is_header_block:
            self._block = _Block(frame.stream_id, [frame.data], "END_STREAM" in frame.flags)
            promised = frame.promised_stream_id
            detail = f"promised_stream={promised}" if promised is not None else ""
            return self._maybe_end_block(base, frame, detail)
        if frame.kind == "CONTINUATION":
            if self._block is None or self._block.stream_id != frame.stream_id:
                raise ValueError("CONTINUATION without a header block to continue")
            self._block.fragments.append(frame.data)
            return self._maybe_end_block(base, frame, "")
        if frame.kind == "DATA":
            return self._data(base, frame)
        if frame.kind.startswith("UNKNOWN"):
            return replace(base, detail=f"{frame.detail} body={_hex(frame.data, 32)}")
        return replace(base, detail=frame.detail)

    def _maybe_end_block(self, base: FrameRecord, frame: ParsedFrame, detail: str) -> FrameRecord:
        block = self._block
        if block is None or "END_HEADERS" not in frame.flags:
            return replace(base, detail=detail or "header block continues")
        self._block = None
        raw = self._hpack.decode(b"".join(block.fragments))
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

    def _data(self, base: FrameRecord, frame: ParsedFrame) -> FrameRecord:
        st = self._streams.setdefault(frame.stream_id, _Stream())
        payload = frame.data
        detail = f"payload={len(payload)}" + (f" pad={frame.pad_length}" if frame.pad_length is not None else "")
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
