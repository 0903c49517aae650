"""Composition root for `hbone frontends` and the single-mode commands: config → running listeners → shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from hbone.admin.dump import plain
from hbone.admin.service import DaemonView, loaded
from hbone.client import Endpoint, HboneClient
from hbone.commands.frontends_config import FrontendsConfig, ListenerSpec
from hbone.configtext import parse_duration, parse_listen, parse_target
from hbone.errors import ConfigError
from hbone.identity.manager import FileSource, IdentityManager
from hbone.proxy.eastwest import SniGateway, static_resolver
from hbone.proxy.egress import EgressConfig, EgressHandler, rules_from_list
from hbone.proxy.frontend import Dialer, Opener
from hbone.proxy.h2r import H2RGateway, H2RInbound, H2RNode, H2ROpener, local_names_resolver
from hbone.proxy.httpproxy import HttpConnectProxy
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.ingress import Ingress, parse_hosts
from hbone.proxy.redirect import DEFAULT_MARK, CaptureMode, InboundPlaintext, OutboundCapture, capture_mark
from hbone.proxy.routing import Action
from hbone.proxy.socks5 import Socks5Proxy
from hbone.server import HboneServer
from hbone.tls import MeshTls


def _require_via_identities(cfg: FrontendsConfig) -> None:
    """Over mTLS every `via` and double-HBONE gateway names the identities it may present: an empty list would
    accept any workload certificate as the HBONE server (refused at start, saying what to set)."""
    for route in (*cfg.routes.routes, cfg.routes.default):
        if route.via is not None and not route.via.identities:
            raise ConfigError(
                f"route {route.name}: via {route.via.address} needs identities: [SPIFFE id of that HBONE server] "
                "(--expect-identity with --via)"
            )
        double = route.double_hbone
        if double is not None and not double.gateway_identities:
            raise ConfigError(f"route {route.name}: double_hbone needs gateway_identities: [the gateway's SPIFFE id]")


def _redacted(options: Any) -> dict[str, Any]:
    """Listener options for the config dump, with secrets (proxy passwords) left out."""
    out: dict[str, Any] = plain(options)
    if "users" in out:
        out["users"] = sorted(out["users"])  # names only
    return out


class Runtime:
    def __init__(self, cfg: FrontendsConfig) -> None:
        self.cfg = cfg
        self.manager: IdentityManager | None = None
        self.tls: MeshTls | None = None
        self.client: HboneClient | None = None
        self.opener: Opener | None = None
        self.servers: list[asyncio.Server] = []
        self.hbone_servers: list[HboneServer] = []
        self.gateways: list[H2RGateway] = []
        self.nodes: list[H2RNode] = []
        self.ingresses: list[Ingress] = []
        self.bound: list[str] = []

    def _need_tls(self, spec: ListenerSpec) -> MeshTls:
        if self.tls is None:
            raise ConfigError(f"listener {spec.type} needs certificates (--certs DIR or certs: in the config)")
        return self.tls

    async def start(self) -> None:
        cfg = self.cfg
        tunnelled = [r.name for r in (*cfg.routes.routes, cfg.routes.default) if r.action is Action.HBONE]
        if tunnelled and cfg.certs is None:  # refuse now rather than fail every request later
            raise ConfigError(
                f"route {tunnelled[0]!r} tunnels over mTLS HBONE and needs our identity: give --certs DIR "
                "(or certs: in the config)"
            )
        mark = cfg.mark
        if any(spec.type in ("redirect", "tproxy") for spec in cfg.listeners):
            mark = capture_mark(mark)
        if cfg.certs is not None:
            _require_via_identities(cfg)
            self.manager = IdentityManager(FileSource(cfg.certs))
            await self.manager.start()
            self.tls = MeshTls(self.manager)
            self.client = HboneClient(self.tls, mark=mark)  # marked dials: capture rules skip them by mark
        self.opener = Dialer(
            self.client, cfg.routes, dial_timeout=cfg.dial_timeout, mark=mark, idle_timeout=cfg.tunnel_idle_timeout
        )
        # H2R gateways first: their registered names take precedence for every other front end.
        ordered = sorted(cfg.listeners, key=lambda s: s.type != "h2r-gateway")
        try:
            for spec in ordered:
                await self._start(spec)
        except BaseException:
            await self.close()
            raise

    def _note(self, spec: ListenerSpec, server: asyncio.Server | tuple[str, int]) -> None:
        if isinstance(server, tuple):
            self.bound.append(f"{spec.type} listening {server[0]}:{server[1]}")
        else:  # not isinstance(asyncio.Server): uvloop's servers do not derive from it (the CLI runs on uvloop)
            self.servers.append(server)
            sock: Any = server.sockets[0].getsockname()
            self.bound.append(f"{spec.type} listening {sock[0]}:{sock[1]}")

    async def _hbone(self, spec: ListenerSpec, handler: InboundHandler, host: str, port: int) -> None:
        server = HboneServer(self._need_tls(spec), handler)
        self.hbone_servers.append(server)
        self._note(spec, await server.listen(host, port))

    async def _start(self, spec: ListenerSpec) -> None:
        opener = self.opener
        assert opener is not None
        kind, opts = spec.type, spec.options
        base = InboundConfig(
            own_ports=frozenset(), dial_timeout=self.cfg.dial_timeout, idle_timeout=self.cfg.tunnel_idle_timeout
        )
        if kind == "socks5":
            self._note(spec, await Socks5Proxy(opener, users=opts.get("users")).start(spec.host, spec.port))
        elif kind == "http-connect":
            self._note(spec, await HttpConnectProxy(opener, users=opts.get("users")).start(spec.host, spec.port))
        elif kind in ("redirect", "tproxy"):
            self._note(spec, await OutboundCapture(opener, CaptureMode(kind)).start(spec.host, spec.port))
        elif kind == "inbound-plaintext":
            plain = InboundPlaintext(
                base.authorize,
                mode=CaptureMode(str(opts.get("capture", "redirect"))),
                proxy_protocol=bool(opts.get("proxy_protocol", False)),
                dial_timeout=self.cfg.dial_timeout,
                idle_timeout=self.cfg.tunnel_idle_timeout,
                mark=self.cfg.mark if self.cfg.mark is not None else DEFAULT_MARK,
            )
            self._note(spec, await plain.start(spec.host, spec.port))
        elif kind == "sni-gateway":
            gw = SniGateway(opener, default_port=int(opts.get("default_port", 443)))
            self._note(spec, await gw.start(spec.host, spec.port))
        elif kind == "double-hbone-gateway":
            base.resolve = static_resolver(opts.get("services") or {})
            await self._hbone(spec, InboundHandler(base), spec.host, spec.port)
        elif kind == "egress":
            handler = EgressHandler(EgressConfig(rules_from_list(opts.get("allow"), "allow"), base))
            await self._hbone(spec, handler, spec.host, spec.port)
        elif kind == "h2r-gateway":
            h2r = H2RGateway(self._need_tls(spec), names=opts.get("names") or {})
            self.gateways.append(h2r)
            self._note(spec, await h2r.listen(spec.host, spec.port))
            self.opener = H2ROpener(h2r, opener)
            if opts.get("hbone_listen"):
                front = parse_listen(str(opts["hbone_listen"]), "hbone_listen")
                host = str(front.ip) if front.ip is not None else front.host
                await self._hbone(spec, H2RInbound(h2r, base), host, front.port)
        elif kind == "h2r-node":
            gw_addr = parse_target(opts["gateway"], "gateway")
            endpoint = Endpoint(gw_addr.host, gw_addr.port, tuple(str(i) for i in opts.get("gateway_identities") or ()))
            base.resolve = local_names_resolver({str(n) for n in opts.get("names") or ()})
            node = H2RNode(self._need_tls(spec), endpoint, InboundHandler(base))
            node.start()
            self.nodes.append(node)
            self.bound.append(f"h2r-node dialing {gw_addr}")
        elif kind.startswith("ingress-"):
            await self._start_ingress(spec, opener)
        else:  # pragma: no cover - frontends_config rejects unknown types
            raise ConfigError(f"unknown listener type {kind}")

    async def _start_ingress(self, spec: ListenerSpec, opener: Opener) -> None:
        opts = spec.options
        timeout = parse_duration(opts.get("request_timeout", "15s"), f"{spec.type}: request_timeout")
        ingress = Ingress(opener, hosts=parse_hosts(opts.get("hosts") or {}), request_timeout=timeout)
        self.ingresses.append(ingress)
        if spec.type == "ingress-tcp":
            server = await ingress.start_tcp(spec.host, spec.port, parse_target(opts["target"], "target"))
        elif spec.type == "ingress-tls-passthrough":
            server = await ingress.start_tls_passthrough(spec.host, spec.port)
        elif spec.type == "ingress-tls-terminate":
            certs = {str(k): Path(str(v)) for k, v in opts["certs"].items()}
            server = await ingress.start_tls_terminate(spec.host, spec.port, certs, http=bool(opts.get("http")))
        else:
            server = await ingress.start_http(spec.host, spec.port)
        self._note(spec, server)

    def view(self) -> DaemonView:
        """What the admin port shows of this runtime."""

        def config() -> dict[str, Any]:
            return {
                "listeners": [{"type": s.type, "listen": f"{s.host}:{s.port}", **_redacted(s.options)}
                              for s in self.cfg.listeners] + [{"bound": b} for b in self.bound],
                "routes": plain(self.cfg.routes),
                "dial_timeout": self.cfg.dial_timeout,
            }  # fmt: skip

        def not_ready() -> str | None:
            if self.cfg.certs is not None and not loaded(self.manager):
                return "no certificate loaded"
            return None if self.bound else "no listener bound"

        return DaemonView(certificates=lambda: loaded(self.manager), config=config, not_ready=not_ready)

    def describe(self) -> list[str]:
        ident = self.manager.identity if self.manager else None
        return [*self.bound, f"identity {ident}"]

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
        for server in self.servers:
            server.close()
        for hb in self.hbone_servers:
            await hb.close()
        for gw in self.gateways:
            await gw.close()
        for ingress in self.ingresses:
            await ingress.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self.client is not None:
            await self.client.close()
        if self.manager is not None:
            await self.manager.stop()
