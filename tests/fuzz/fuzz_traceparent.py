"""W3C `traceparent`: parse, and a parsed value must print back to the same text and parse again."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.tracecontext import TraceParent
from tests.fuzz.harness import Bytes, Harness, pack, text_of


def run(data: bytes) -> None:
    b = Bytes(data)
    flavour = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    text = text_of(b.rest(), flavour)
    tp = TraceParent.parse(text)
    assert TraceParent.parse(str(tp)) == tp
    tp.child()


def seeds() -> dict[str, bytes]:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    return {
        "valid": pack(b"\0", good.encode()),
        "unsampled": pack(b"\0", good[:-2].encode() + b"00"),
        "generated": pack(b"\0", str(TraceParent("ab" * 16, "cd" * 8, 3)).encode()),
        "zero-trace": pack(b"\0", ("00-" + "0" * 32 + "-00f067aa0ba902b7-01").encode()),
        "upper": pack(b"\0", good.upper().encode()),
        "version-ff": pack(b"\0", b"ff" + good[2:].encode()),
        "short": pack(b"\0", good[:-1].encode()),
    }


HARNESS = Harness("traceparent", run, (HboneError,), seeds, max_len=256)
