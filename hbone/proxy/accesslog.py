"""One structured access-log record per tunnel (ztunnel logs one per connection, too).

Records go to the `hbone.access` logger as a single JSON line in the message and as `extra` fields, so both
plain log files and structured handlers get them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hbone.access")


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
    started: float = field(default_factory=time.monotonic)
    duration_ms: float = 0.0

    def finish(self, status: int, result: str) -> None:
        self.status = status
        self.result = result
        self.duration_ms = round((time.monotonic() - self.started) * 1000, 3)
        # Tunnel churn profile: asdict()'s recursive deep copy was ~9% of the server's per-tunnel CPU. Build the
        # flat dict directly, and only when someone will see it (serve logs at WARNING unless -v).
        if log.isEnabledFor(logging.INFO):
            record = self.as_dict()
            log.info(json.dumps(record, separators=(",", ":")), extra={"access": record})

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
            "duration_ms": self.duration_ms,
        }
