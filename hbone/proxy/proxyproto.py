"""HBONE inbound for apps that ask for PROXY protocol (ztunnel's `application_tunnel{protocol=PROXY}`).

Same as `InboundHandler`, but before the first byte the app receives a PROXY v2 header: src = the HBONE client's
address, dst = the address dialed, TLV 0xD0 = the client's SPIFFE id (docs/hbone-spec.md §5).
`ports` limits it to the app ports that asked for it (empty: every tunnel).

Lives beside `inbound.py` rather than in it; a cleaner hook there would be an `InboundConfig.app_tunnel(target)`
callback consulted right after the dial.
"""

from __future__ import annotations

import asyncio

from hbone.net.stream import Stream
from hbone.net.tlsstream import TlsStream
from hbone.proxy.guard import TunnelGuard
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.wire.authority import parse_authority
from hbone.wire.proxyv2 import proxy_header


class ProxyProtocolInbound(InboundHandler):
    def __init__(self, config: InboundConfig, ports: frozenset[int] = frozenset()) -> None:
        super().__init__(config)
        self.ports = ports

    async def relay(
        self,
        stream: Stream,
        pipe: Stream | TlsStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        guard: TunnelGuard,
    ) -> None:
        record = guard.record
        dst = writer.get_extra_info("peername")
        if dst and record.src_addr and (not self.ports or int(dst[1]) in self.ports):
            src = parse_authority(record.src_addr)
            if src.ip is not None and src.ip.version == (6 if ":" in str(dst[0]) else 4):
                writer.write(proxy_header(src, (str(dst[0]), int(dst[1])), client_identity=record.src_identity))
        await super().relay(stream, pipe, reader, writer, guard)
