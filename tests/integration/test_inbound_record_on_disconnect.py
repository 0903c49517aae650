"""A tunnel whose HTTP/2 connection dies (the client process went away) still gets its access record.

The connection cancels its handler tasks on loss; the inbound handler used to be cancelled inside the splice and
never logged the tunnel. Seen with istio's Go client, which may exit before its RST_STREAM goes out.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from hbone.client import Endpoint, HboneClient
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.server import HboneServer
from hbone.testing import TestCA, start_echo_server

pytestmark = pytest.mark.timeout(30)


async def test_record_written_when_connection_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA()
    server = HboneServer(ca.mesh_tls("ns", "bob"), InboundHandler(InboundConfig()))
    _, port = await server.listen("127.0.0.1", 0)
    echo, echo_port = await start_echo_server()
    client = HboneClient(ca.mesh_tls("ns", "alice"))
    caplog.set_level(logging.INFO, logger="hbone.access")
    try:
        tunnel = await client.open(f"127.0.0.1:{echo_port}", Endpoint("127.0.0.1", port))
        tunnel.write(b"ping")
        assert await asyncio.wait_for(tunnel.read(), 10) == b"ping"
        tunnel.h2.connection.abort()  # no RST_STREAM, no GOAWAY: the TCP connection just goes

        async def record() -> dict[str, object]:
            while True:
                for r in caplog.records:
                    if r.name == "hbone.access":
                        return dict(json.loads(r.getMessage()))
                await asyncio.sleep(0.02)  # poll interval, not synchronisation

        rec = await asyncio.wait_for(record(), 10)
        assert rec["status"] == 200 and str(rec["result"]).startswith("broken:"), rec
        assert rec["src_identity"] == "spiffe://cluster.local/ns/ns/sa/alice"
        assert rec["bytes_sent"] == 4
    finally:
        await client.close()
        await server.close()
        echo.close()
