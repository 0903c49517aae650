"""Egress gateway: terminate mesh mTLS CONNECT/POST, check caller and destination, dial out (optionally TLS).

An HBONE server whose streams leave the mesh. Per stream: the destination must match an allow-list rule that also
names the caller identities it admits (else 403), then the usual authorization policies apply (401), the name is
resolved with the system resolver, and the gateway dials. A rule with `tls` originates TLS on the caller's behalf,
verifying the destination's certificate against the given CA file (or the system roots) and name, so workloads
can send plaintext to an HTTPS API through the mesh.

```yaml
- type: egress
  listen: 0.0.0.0:15008
  allow:
    - name: github
      match: {hosts: ["api.github.com"], ports: [443]}
      callers: ["spiffe://cluster.local/ns/ci/sa/*"]
      tls: {ca_file: /etc/ssl/certs/ca-certificates.crt, sni: api.github.com}
```
"""

from __future__ import annotations

import asyncio
import fnmatch
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from hbone.errors import BadRequest, ConfigError
from hbone.identity.spiffe import SpiffeId
from hbone.net.stream import Stream
from hbone.proxy.frontend import dial_tcp
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import INNER_MTLS_PATH, InboundConfig, InboundHandler
from hbone.proxy.routing import Match, RouteDenied, match_from_dict
from hbone.server import PeerInfo
from hbone.wire.authority import Authority
from hbone.wire.tunnel_request import TunnelMode, parse_tunnel_request


@dataclass(frozen=True, slots=True)
class TlsOrigination:
    """Originate TLS to the destination. `ca_file` None means the system roots; `sni` defaults to the host."""

    ca_file: str | None = None
    sni: str | None = None
    verify: bool = True
    alpn: tuple[str, ...] = ()

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx


@dataclass(frozen=True, slots=True)
class EgressRule:
    name: str
    match: Match
    #: Caller SPIFFE ids admitted, as shell patterns (`spiffe://td/ns/app/sa/*`). Empty admits nobody: every
    #: workload of the trust domain is `spiffe://td/*`, written out.
    callers: tuple[str, ...] = ()
    tls: TlsOrigination | None = None

    def admits(self, caller: SpiffeId | None) -> bool:
        return caller is not None and any(fnmatch.fnmatchcase(str(caller), p) for p in self.callers)


def rule_from_dict(data: object, where: str) -> EgressRule:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(map(str, set(data) - {"name", "match", "callers", "tls"}))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: name, match, callers, tls")
    tls = data.get("tls")
    origination: TlsOrigination | None = None
    if tls is not None:
        if tls is True:
            tls = {}
        if not isinstance(tls, dict) or set(tls) - {"ca_file", "sni", "verify", "alpn"}:
            raise ConfigError(f"{where}.tls: expected a mapping with ca_file, sni, verify, alpn")
        origination = TlsOrigination(
            str(tls["ca_file"]) if tls.get("ca_file") else None,
            str(tls["sni"]) if tls.get("sni") else None,
            bool(tls.get("verify", True)),
            tuple(str(a) for a in tls.get("alpn") or ()),
        )
    callers = data.get("callers") or []
    if not isinstance(callers, list):
        raise ConfigError(f"{where}.callers: expected a list of SPIFFE id patterns")
    if not callers:  # an empty list never means "anyone"
        raise ConfigError(
            f"{where}.callers: name the SPIFFE ids allowed to use this rule (--caller), e.g. spiffe://td/ns/app/sa/*"
        )
    return EgressRule(
        str(data.get("name", where)),
        match_from_dict(data.get("match"), f"{where}.match"),
        tuple(str(c) for c in callers),
        origination,
    )


@dataclass
class EgressConfig:
    rules: tuple[EgressRule, ...] = ()
    inbound: InboundConfig = field(default_factory=lambda: InboundConfig(own_ports=frozenset()))


class EgressHandler(InboundHandler):
    """An inbound handler for the egress gateway's HBONE listener (plug into `HboneServer`)."""

    def __init__(self, config: EgressConfig) -> None:
        super().__init__(config.inbound)
        self.rules = config.rules

    def allowed(self, target: Authority, caller: SpiffeId | None) -> EgressRule:
        """The first rule whose destination matches and which admits the caller; RouteDenied (403) otherwise."""
        matching = [r for r in self.rules if r.match.matches(target)]
        if not matching:
            raise RouteDenied(f"egress to {target} is not in the allow-list")
        for rule in matching:
            if rule.admits(caller):
                return rule
        raise RouteDenied(f"egress to {target} is not allowed for {caller or 'an unauthenticated caller'}")

    async def handle_stream(self, stream: Stream, peer: PeerInfo, guard: TunnelGuard) -> None:
        record = guard.record
        record.direction = "egress"
        req = parse_tunnel_request(stream.request_headers)
        record.mode, record.dst_addr = req.mode.value, str(req.target)
        if req.mode is TunnelMode.POST and req.path == INNER_MTLS_PATH:
            raise BadRequest("the egress gateway takes plain CONNECT/POST tunnels, not inner mTLS")
        rule = self.allowed(req.target, peer.identity)
        host, port = await self.admit(req, peer, record)
        reader, writer = await self._dial_out(req.target, host, port, rule)
        record.policy = f"{rule.name}+{record.policy}" if record.policy else rule.name
        await self.relay(stream, stream, reader, writer, guard)

    async def _dial_out(
        self, target: Authority, host: str, port: int, rule: EgressRule
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if rule.tls is None:
            return await dial_tcp(host, port, connect_timeout=self.config.dial_timeout)
        sni = rule.tls.sni or target.host
        return await dial_tcp(
            host,
            port,
            connect_timeout=self.config.dial_timeout,
            ssl_context=rule.tls.context(),
            server_hostname=sni,
        )


def rules_from_list(items: object, where: str = "allow") -> tuple[EgressRule, ...]:
    if items is None:
        return ()
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ConfigError(f"{where}: expected a list of rules")
    return tuple(rule_from_dict(item, f"{where}[{i}]") for i, item in enumerate(items))
