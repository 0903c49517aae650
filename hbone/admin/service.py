"""The admin (`/config_dump`, `/connections`, `/logging`), metrics (`/metrics`) and readiness (`/healthz/ready`)
ports of one daemon, ztunnel's :15000, :15020 and :15021.

A daemon describes itself with a `DaemonView` (its certificates, its config dump, why it is not ready yet, its
xDS client counters) and hands it to `Observability`, which owns the telemetry, registers the access sink and
runs the three small HTTP servers (`hbone.admin.http`). Every port is optional (`off`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hbone import logsetup
from hbone.admin.http import Handler, HttpServer, Query, Response
from hbone.admin.options import AdminOptions
from hbone.admin.telemetry import Telemetry, XdsCounters
from hbone.errors import CertificateError
from hbone.identity.certs import CertifiedKey
from hbone.identity.manager import IdentityManager
from hbone.proxy import accesslog


@dataclass
class DaemonView:
    """What a daemon shows: all callables, read on each request (never cached)."""

    certificates: Callable[[], Iterable[CertifiedKey]] = tuple
    config: Callable[[], dict[str, Any]] = dict
    not_ready: Callable[[], str | None] = lambda: None  # None when ready, else why not
    xds: Callable[[], XdsCounters] | None = None


def loaded(*managers: IdentityManager | None) -> list[CertifiedKey]:
    """The current certificate of each manager that has one (a manager still fetching is skipped)."""
    out = []
    for m in managers:
        if m is None:
            continue
        try:
            out.append(m.current)
        except CertificateError:
            continue
    return out


def certificate_info(cert: CertifiedKey) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "identity": str(cert.identity) if cert.identity else None,
        "serial": format(cert.leaf.serial_number, "x"),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "expires_in_seconds": int((cert.not_after - now).total_seconds()),
        "chain_length": len(cert.chain),
        "roots": len(cert.roots),
    }


@dataclass
class Observability:
    """`await start()` binds the configured ports (a busy port is a one-line ConfigError naming the flag)."""

    options: AdminOptions
    view: DaemonView = field(default_factory=DaemonView)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.telemetry = Telemetry(certificates=self.view.certificates, xds=self.view.xds)
        self._servers: list[HttpServer] = []
        self._remove_sink: Callable[[], None] | None = None

    async def start(self) -> dict[str, tuple[str, int]]:
        if any(name in ("admin", "metrics") for name, _ in self.options.ports()):
            # Only those two ports read the tunnel counters and the open-tunnel table: with both off, counting
            # would be per-tunnel work nobody can see.
            self._remove_sink = accesslog.add_sink(self.telemetry)
        routes: dict[str, dict[str, Handler]] = {
            "admin": {"/": self._index, "/config_dump": self._config_dump, "/connections": self._connections,
                      "/logging": self._logging, "/healthz/ready": self._ready, "/metrics": self._metrics},
            "metrics": {"/metrics": self._metrics, "/stats/prometheus": self._metrics},
            "readiness": {"/healthz/ready": self._ready},
        }  # fmt: skip
        try:
            for name, addr in self.options.ports():
                server = HttpServer(routes[name], name=name)
                self.addresses[name] = await server.start(*addr, flag=f"--{name}")
                self._servers.append(server)
        except BaseException:
            await self.stop()
            raise
        return self.addresses

    async def stop(self) -> None:
        for server in self._servers:
            await server.stop()
        self._servers.clear()
        if self._remove_sink is not None:
            self._remove_sink()
            self._remove_sink = None

    def describe(self) -> list[str]:
        return [f"{name} listening {host}:{port}" for name, (host, port) in self.addresses.items()]

    # -- views --------------------------------------------------------------------------------------------------

    def config_dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = {"identities": [certificate_info(c) for c in self.view.certificates()]}
        dump.update(self.view.config())
        return dump

    def _index(self, _q: Query) -> Response:
        return Response.text(
            "/config_dump\n/connections\n/logging?level=LEVEL or LOGGER=LEVEL\n/healthz/ready\n/metrics\n"
        )

    def _config_dump(self, _q: Query) -> Response:
        return Response.json(self.config_dump())

    def _connections(self, _q: Query) -> Response:
        return Response.json(self.telemetry.connections())

    def _logging(self, q: Query) -> Response:
        spec = q.args.get("level")
        return Response.json(logsetup.set_levels(spec) if spec else logsetup.current_levels())

    def _metrics(self, _q: Query) -> Response:
        return Response(200, generate_latest(self.telemetry.registry), CONTENT_TYPE_LATEST)

    def _ready(self, _q: Query) -> Response:
        why = self.view.not_ready()
        return Response.text("ready\n") if why is None else Response.text(f"not ready: {why}\n", 503)
