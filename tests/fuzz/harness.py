"""What every fuzz harness shares: the `Harness` record, a byte consumer for structured inputs, and the registry.

A harness feeds arbitrary bytes to one parser or decoder and lets only documented outcomes pass: a value, or the
package's own error type (`accepted`). Anything else (IndexError, RecursionError, UnicodeDecodeError, an assertion
of a harness invariant) escapes and is a crash; a hang is caught by the engine's per-input timeout.

This module imports nothing of `hbone`/`microxds`: the engine imports the harness modules inside atheris'
instrumentation hook, and a module imported earlier would not be instrumented.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

#: Harness names, each the module `tests.fuzz.fuzz_<name>` defining `HARNESS`.
NAMES = (
    "h2_framebuffer",
    "h2_driver",
    "h2_native",
    "hpack_encoder",
    "grpc_framing",
    "grpc_trailers",
    "grpc_capture",
    "grpc_server",
    "socks5",
    "http1",
    "http_connect",
    "h1head",
    "tunnel_request",
    "clienthello",
    "proxyv2",
    "authority",
    "baggage",
    "forwarded",
    "traceparent",
    "xds_config",
    "hbone_config",
    "configtext",
    "xds_requests",
    "xds_responses",
)

#: Packages whose code the coverage-guided engine instruments (our parsers and the HTTP/2 engine under them).
INSTRUMENTED = ("hbone", "microxds", "h2", "hpack", "hyperframe", "tests.fuzz")


@dataclass(frozen=True)
class Harness:
    """One fuzz target. `run(data)` returns normally or raises one of `accepted`; `seeds()` gives named inputs
    built with our own encoders (valid messages and edge cases) for the committed corpus."""

    name: str
    run: Callable[[bytes], object]
    accepted: tuple[type[BaseException], ...]
    seeds: Callable[[], dict[str, bytes]]
    max_len: int = 4096
    #: One-time work done before the first input (a one-time cost inside an input would look like a hang).
    setup: Callable[[], object] | None = None

    def one_input(self, data: bytes) -> None:
        """The engine's entry point: a documented error is a pass, anything else propagates as a crash."""
        try:
            self.run(data)
        except self.accepted:
            pass


def load(name: str) -> Harness:
    if name not in NAMES:
        raise KeyError(f"no fuzz harness {name!r} (known: {', '.join(NAMES)})")
    module = importlib.import_module(f"tests.fuzz.fuzz_{name}")
    harness: Harness = module.HARNESS
    if harness.setup is not None:
        harness.setup()
    return harness


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS_DIR / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


class Bytes:
    """Consumes a fuzz input as structure: small integers and flags first, byte strings after.

    Running out is never an error (zeros and empty strings follow), so every input maps to some structure and
    the engine's mutations stay meaningful.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def int16(self) -> int:
        return (self.byte() << 8) | self.byte()

    def take(self, n: int) -> bytes:
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def sizes(self) -> bytes:
        """Up to 15 read sizes for `chunks` (the input's own choice of where reads end)."""
        return self.take(self.byte() % 16)


def chunks(data: bytes, sizes: bytes) -> Iterator[bytes]:
    """`data` cut into reads of the given sizes, cycling (0 or no sizes: the rest in one read): a parser must not
    care where reads end."""
    view = memoryview(data)
    i = 0
    while view:
        n = sizes[i % len(sizes)] if sizes else 0
        i += 1
        n = len(view) if n == 0 else n
        yield bytes(view[:n])
        view = view[n:]


def whole_frames(payload: bytes, start: int = 0) -> bytes:
    """`payload` up to the end of its last complete HTTP/2 frame (frames begin at `start`, e.g. after a preface).

    Where a frame's body has not fully arrived, two parsers may legitimately refuse it at different points (from its
    header, or once the body is there), so differential fuzzers compare whole frames only.
    """
    pos = start
    while pos + 9 <= len(payload):
        end = pos + 9 + int.from_bytes(payload[pos : pos + 3], "big")
        if end > len(payload):
            break
        pos = end
    return payload[:pos]


def pack(options: bytes, payload: bytes, sizes: bytes = b"") -> bytes:
    """A seed in the layout harnesses read: option bytes, then `Bytes.sizes()`, then the payload."""
    return options + bytes([len(sizes)]) + sizes + payload


def text_of(data: bytes, flavour: int) -> str:
    """Header text as a peer can make it: UTF-8 with replacement, or Latin-1 (every byte one code point, as h2
    hands us undecoded header bytes decoded by the caller)."""
    return data.decode("latin-1") if flavour & 1 else data.decode("utf-8", "replace")


def headers_of(data: bytes) -> list[tuple[bytes, bytes]]:
    """A header list from `name NUL value` lines (newline-separated), as HPACK would hand it over: raw bytes."""
    out = []
    for line in data.split(b"\n"):
        name, _, value = line.partition(b"\0")
        out.append((name, value))
    return out


def encode_headers(pairs: list[tuple[str, str]]) -> bytes:
    return b"\n".join(f"{n}\0{v}".encode() for n, v in pairs)
