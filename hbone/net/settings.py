"""HTTP/2 connection settings for the HBONE driver.

Defaults follow ztunnel (docs/hbone-spec.md §4); every value can be overridden. The
dataclass is frozen so one instance can be shared by every connection a listener or pool creates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hbone.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB

# RFC 9113 §6.5.2 bounds.
_MIN_FRAME = 16_384
_MAX_FRAME = 16_777_215
_MAX_WINDOW = 2**31 - 1

#: The values of `H2Settings.engine`.
ENGINES = ("h2", "h2-stock", "native")


@dataclass(frozen=True, slots=True)
class H2Settings:
    """Knobs of one HTTP/2 connection. Build role defaults with `client()` / `server()`."""

    #: SETTINGS_INITIAL_WINDOW_SIZE we advertise (per-stream receive window).
    initial_stream_window: int = 4 * MiB
    #: Connection-level receive window; 4x the stream window so one stalled stream cannot starve the others.
    connection_window: int = 16 * MiB
    #: SETTINGS_MAX_FRAME_SIZE we advertise (largest frame we accept).
    max_frame_size: int = 1 * MiB
    #: Largest DATA frame we send, whatever the peer allows. 64 KiB: in an A/B (tunnel-1, 3x200 MB, twice) it gave
    #: +15-20% throughput and 10-20% less receiver CPU than 16 KiB (fewer frames through h2's Python per byte);
    #: 256 KiB was no better, and docs/performance.md measured 1 MiB at 0.75x of 16 KiB. RESULTS-hbone.md.
    #: Payloads are trimmed so a frame fills whole TLS records (65,527 bytes here; `hbone.net.scheduler.record_fit`).
    max_send_frame_size: int = 64 * KiB
    #: SETTINGS_MAX_CONCURRENT_STREAMS we advertise.
    max_concurrent_streams: int = 100
    #: Peer stream limit assumed until its SETTINGS arrive (ztunnel's initial_max_send_streams).
    initial_max_send_streams: int = 100
    #: SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce (RFC 9113 §6.5.2, size = name + value + 32).
    max_header_list_size: int = 16 * KiB
    #: Bytes a stream may hold queued for sending before `drain()` blocks the writer.
    max_send_buffer: int = 4 * MiB
    #: Seconds between keepalive PINGs; None disables keepalive.
    ping_interval: float | None = 10.0
    #: Seconds to wait for a PING ACK before the connection is declared dead.
    ping_timeout: float = 20.0
    #: Default deadline (seconds) of `H2Connection.drain()` after GOAWAY.
    drain_deadline: float = 5.0
    #: Return receive-window credit once 1/N of a window was consumed. h2's N=2 left sender and receiver idle
    #: 30-50% between 2 MiB credit steps; in an A/B, N=4 moved tunnel-1 from ~700 to ~780 MB/s with ~12% less
    #: CPU in total (N=8 was no faster). RESULTS-hbone.md.
    window_update_divisor: int = 4
    #: Size of the single reused receive buffer (asyncio.BufferedProtocol.get_buffer).
    read_buffer_size: int = 256 * KiB
    #: SETTINGS_HEADER_TABLE_SIZE we advertise: the HPACK dynamic table the peer may fill in our decoder
    #: (RFC 7541 §4.2). 4096 is the protocol default; a server of thousands of one-stream connections (xDS) gains
    #: nothing from a table and can ask for less.
    header_table_size: int = 4096
    #: Let h2 validate and normalise headers we send. Off: callers pass headers built and validated by hbone.wire.
    validate_outbound_headers: bool = False
    #: Huffman-code the header blocks we send (RFC 7541 §5.2). Off: hpack's pure-Python coder cost ~3% of churn
    #: CPU on each side for ~20% smaller literals (h2tuning item 7); every peer decodes both forms.
    huffman_headers: bool = False
    # --- abuse limits (README "Security and robustness"; each trip is counted in hbone.limits) ---------------
    #: Streams the peer may reset before we answered them, per second, before GOAWAY ENHANCE_YOUR_CALM (rapid reset,
    #: CVE-2023-44487). Envoy closes a connection once more than half of >=500 streams were reset within 1 s of
    #: opening; hyper (ztunnel) allows 20 reset streams pending accept. 100/s passes any client that cancels
    #: requests normally and stops an attack after ~100 streams of work.
    max_resets_per_second: int = 100
    #: Request handlers running that have not answered yet, reset streams included until their work is cancelled;
    #: more are refused (REFUSED_STREAM, safe to retry). None: `max_concurrent_streams` (a burst of legitimate
    #: requests must not be refused; the rapid reset limit bounds the reset ones).
    max_pending_streams: int | None = None
    #: PING, SETTINGS and PRIORITY frames the peer may send per second before GOAWAY ENHANCE_YOUR_CALM (a peer
    #: sends a handful; each costs an ACK or h2 bookkeeping here).
    max_control_frames_per_second: int = 1000
    #: Bytes queued in the transport above which we stop reading from the peer until it reads (queued PING/SETTINGS
    #: ACKs of a peer that does not read). Envoy's per-connection buffer limit is 1 MiB too. At least 64 KiB: reading
    #: resumes when the transport drains below its low-water mark, so the cap must be above its high-water mark.
    max_outbound_buffer: int = 1 * MiB
    #: Server: seconds from accept (after TLS) until the client's preface and SETTINGS must have arrived.
    preface_timeout: float | None = 10.0
    #: Server: seconds a connection may stay without streams before GOAWAY and close. Envoy's default HTTP idle
    #: timeout is 1 h too; ztunnel keeps idle inbound connections until the client drops them.
    idle_timeout: float | None = 3600.0
    #: The sans-IO HTTP/2 engine under the driver (`hbone.net.h2.new_engine`, docs/h2-engine.md): "native" (our
    #: own frame layer for the HBONE/gRPC profile; 2.5x less server CPU per tunnel in the driver alone), "h2"
    #: (the h2 library with our tuned fast paths, the native engine's test oracle) or "h2-stock" (the same with
    #: its DATA and credit fast paths off: h2's own per-frame code, the baseline `tools/bench/h2_micro.py`
    #: measures those fast paths against).
    engine: str = "native"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "native" and self.validate_outbound_headers:
            # h2's outbound normalisation has no counterpart there: its callers send headers built by hbone.wire.
            raise ConfigError("validate_outbound_headers needs engine 'h2'")
        if not 65_535 <= self.initial_stream_window <= _MAX_WINDOW:
            raise ConfigError(f"initial_stream_window {self.initial_stream_window} out of range [65535, 2^31-1]")
        if not 65_535 <= self.connection_window <= _MAX_WINDOW:
            raise ConfigError(f"connection_window {self.connection_window} out of range [65535, 2^31-1]")
        if not _MIN_FRAME <= self.max_frame_size <= _MAX_FRAME:
            raise ConfigError(f"max_frame_size {self.max_frame_size} out of range [16384, 2^24-1] (RFC 9113 §6.5.2)")
        if not 1 <= self.max_send_frame_size <= _MAX_FRAME:
            raise ConfigError(f"max_send_frame_size {self.max_send_frame_size} must be positive")
        for name in (
            "max_concurrent_streams",
            "initial_max_send_streams",
            "max_header_list_size",
            "max_send_buffer",
            "read_buffer_size",
            "window_update_divisor",
            "max_resets_per_second",
            "max_control_frames_per_second",
            "max_outbound_buffer",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")
        if self.max_outbound_buffer < 64 * KiB:
            raise ConfigError("max_outbound_buffer must be at least 65536 (the transports' high-water mark)")
        if self.max_pending_streams is not None and self.max_pending_streams < 1:
            raise ConfigError("max_pending_streams must be positive or None")
        if not 0 <= self.header_table_size <= 2**32 - 1:
            raise ConfigError(f"header_table_size {self.header_table_size} out of range [0, 2^32-1]")
        for name in ("preface_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or None")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ConfigError("ping_interval must be positive or None")
        if self.ping_timeout <= 0 or self.drain_deadline < 0:
            raise ConfigError("ping_timeout must be positive and drain_deadline non-negative")

    @classmethod
    def client(cls, **overrides: Any) -> H2Settings:
        """ztunnel client defaults: 100 streams, 16 KiB header list, 4 MiB send buffer."""
        return cls(**overrides)

    @classmethod
    def server(cls, **overrides: Any) -> H2Settings:
        """ztunnel server defaults: 200 streams, 64 KiB header list, 400 KiB send buffer."""
        base: dict[str, Any] = {
            "max_concurrent_streams": 200,
            "max_header_list_size": 64 * KiB,
            "max_send_buffer": 400 * KiB,
        }
        base.update(overrides)
        return cls(**base)

    @property
    def pending_stream_limit(self) -> int:
        """`max_pending_streams`, or `max_concurrent_streams` when unset."""
        return self.max_concurrent_streams if self.max_pending_streams is None else self.max_pending_streams

    def replace(self, **changes: Any) -> H2Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
