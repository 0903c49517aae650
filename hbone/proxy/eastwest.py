"""East-west gateways: the :15443 SNI gateway and the ztunnel-style double-HBONE gateway (plus its client side).

SNI gateway (Istio's east-west gateway, `AUTO_PASSTHROUGH`): read the TLS ClientHello without terminating it,
map the SNI (`outbound_.PORT_.SUBSET_.HOST`, or a natural `host` on `default_port`) to a target, and forward every
byte received (the ClientHello included) over HBONE; the mTLS session stays end to end between the two
workloads. A route's `token_file` adds `authorization: Bearer` for hops that ask for it. A ClientHello that is
garbage or never completes is refused with a TLS alert and a close; nothing reaches an upstream.

Double HBONE (docs/hbone-spec.md): the gateway accepts an outer CONNECT to `svc-fqdn:port`, resolves the service to an
endpoint workload on its network and forwards the inner bytes (TLS + HTTP/2 of the inner tunnel) opaquely to that
workload's HBONE port. The client side is `hbone.proxy.double_hbone`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from hbone.errors import ClientClosed, ProtocolError, UpstreamUnreachable
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.frontend import Opener, fmt_addr, relay
from hbone.proxy.guard import TunnelGuard, client_phase
from hbone.proxy.inbound import Resolver
from hbone.proxy.listener import start_listener
from hbone.proxy.responders import TcpResponder
from hbone.state.snapshot import MeshSnapshot
from hbone.wire.authority import Authority, parse_authority
from hbone.wire.clienthello import ClientHello, ClientHelloReader, sni_target

log = logging.getLogger("hbone.eastwest")

SNI_GATEWAY_PORT = 15443
# TLS alerts (RFC 8446 §6): a fatal alert record in TLS 1.0 record framing, which every client parses.
ALERT_DECODE_ERROR = 50
ALERT_INTERNAL_ERROR = 80
ALERT_UNRECOGNIZED_NAME = 112


def tls_alert(description: int) -> bytes:
    return bytes((21, 3, 1, 0, 2, 2, description))


class SniGateway:
    """The :15443 listener: ClientHello → SNI → route → HBONE, bytes untouched."""

    def __init__(
        self, opener: Opener, *, default_port: int = 443, hello_timeout: float = 10.0, max_hello: int = 16 * 1024
    ) -> None:
        self.opener = opener
        self.default_port = default_port
        self.hello_timeout = hello_timeout
        self.max_hello = max_hello
        self.refused = 0

    async def start(self, host: str = "0.0.0.0", port: int = SNI_GATEWAY_PORT) -> asyncio.Server:
        return await start_listener(self.handle, host, port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        record = AccessRecord("sni-gateway", mode="SNI", src_addr=fmt_addr(peer))
        hello = ClientHelloReader(self.max_hello)
        with TunnelGuard(record, TcpResponder(writer, alert=lambda status: self._refused(record, status))) as guard:
            parsed: ClientHello | None = None
            async with client_phase("ClientHello", self.hello_timeout):
                while parsed is None:
                    parsed = hello.feed(await _read_or_eof(reader))
            if parsed.server_name is None:
                raise ProtocolError("ClientHello has no server_name; the SNI gateway routes by SNI only")
            target = sni_target(parsed.server_name, self.default_port)
            record.dst_addr = str(target)
            src = (str(peer[0]), int(peer[1])) if peer else None
            upstream = await self.opener.open(target, src=src, record=record)
            await relay(reader, writer, upstream, guard, hello.data)

    def _refused(self, record: AccessRecord, status: int) -> bytes | None:
        """The TLS alert for a refusal (none for a client that timed out or left): decode_error for a bad
        ClientHello, unrecognized_name for a route that refuses the name, internal_error for anything else."""
        self.refused += 1
        log.info("SNI gateway refused %s with %d", record.src_addr, status)
        alert = _ALERTS.get(status, ALERT_INTERNAL_ERROR)
        return tls_alert(alert) if alert is not None else None


_ALERTS: dict[int, int | None] = {
    400: ALERT_DECODE_ERROR,  # a malformed ClientHello
    431: ALERT_DECODE_ERROR,  # one over the size limit
    403: ALERT_UNRECOGNIZED_NAME,  # the route table refuses the name
    408: None,  # the client never finished its ClientHello
    499: None,  # or went away
}


async def _read_or_eof(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(4096)
    if not data:
        raise ClientClosed("client closed before the ClientHello was complete")
    return data


# --- double HBONE: the gateway's resolver ---------------------------------------------------------------------------


def static_resolver(table: Mapping[str, str], fallback: Resolver | None = None) -> Resolver:
    """`svc-fqdn:port` → `ip:hbone-port` from a fixed map (config files, tests)."""
    parsed = {str(parse_authority(k)): parse_authority(v) for k, v in table.items()}

    async def resolve(target: Authority) -> tuple[str, int]:
        hit = parsed.get(str(target))
        if hit is not None:
            return (str(hit.ip) if hit.ip is not None else hit.host), hit.port
        if fallback is not None:
            return await fallback(target)
        raise UpstreamUnreachable(f"no service {target} on this network")

    return resolve


def mesh_resolver(snapshot: Callable[[], MeshSnapshot], *, network: str = "", hbone_port: int = 15008) -> Resolver:
    """`svc-fqdn:port` → an endpoint workload of that service on `network`, at its HBONE port."""

    async def resolve(target: Authority) -> tuple[str, int]:
        if target.ip is not None:
            return str(target.ip), hbone_port
        snap = snapshot()
        svc = snap.service_by_host(target.host)
        if svc is None:
            raise UpstreamUnreachable(f"unknown service {target.host}")
        for ep in snap.endpoints(svc, target.port):
            if ep.address is not None and ep.workload.network == network:
                return str(ep.address), hbone_port
        raise UpstreamUnreachable(f"service {target} has no endpoint on network {network or '(default)'}")

    return resolve
