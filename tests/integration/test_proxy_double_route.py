"""Double HBONE chosen by a route: an outbound front end (CONNECT proxy, SOCKS5) reaches a workload on another
network through the double-HBONE gateway; the inner mTLS runs end to end between the proxy and the workload."""

from __future__ import annotations

import pytest

from hbone.client import HboneClient
from hbone.errors import ConfigError
from hbone.proxy.frontend import Dialer
from hbone.proxy.httpproxy import HttpConnectProxy
from hbone.proxy.routing import table_from_list
from hbone.proxy.socks5 import Socks5Proxy
from hbone.server import HboneServer
from hbone.testing import TestCA
from hbone.wire.socks5 import ReplyCode
from tests.integration.test_proxy_gateways import SVC, RecordingInbound, fixed
from tests.integration.test_proxy_mesh import (
    echo_server,
    echo_through,
    hbone_node,
    http_connect,
    serving,
    socks_connect,
)

pytestmark = pytest.mark.timeout(30)


async def test_route_selects_double_hbone_for_connect_and_socks5() -> None:
    ca = TestCA()
    async with echo_server() as eport:
        workload = RecordingInbound(fixed("127.0.0.1", eport))
        wl_server = HboneServer(ca.mesh_tls("ns", "echo"), workload)
        _, wl_port = await wl_server.listen("127.0.0.1", 0)
        async with hbone_node(ca, "eastwest", "istio-system", resolve=fixed("127.0.0.1", wl_port).resolve) as gw:
            routes = table_from_list([{
                "name": "remote",
                "match": {"hosts": ["*.svc.cluster.local"]},
                "double_hbone": {
                    "gateway": f"127.0.0.1:{gw.port}",
                    "gateway_identities": [str(gw.identity)],
                    "identities": [str(ca.spiffe("ns", "echo"))],
                    "network": "net-2",
                },
            }])  # fmt: skip
            client = HboneClient(ca.mesh_tls("ns", "proxy"))
            dialer = Dialer(client, routes)
            async with (
                serving(lambda: HttpConnectProxy(dialer).start("127.0.0.1", 0)) as cport,
                serving(lambda: Socks5Proxy(dialer).start("127.0.0.1", 0)) as sport,
            ):
                response, r, w = await http_connect(cport, f"{SVC}:8443")
                assert response.startswith(b"HTTP/1.1 200")
                assert await echo_through(r, w, b"connect, twice tunneled") == b"connect, twice tunneled"
                reply, r, w = await socks_connect(sport, SVC, 8443)
                assert reply.code == ReplyCode.SUCCEEDED
                assert await echo_through(r, w, b"socks5, twice tunneled") == b"socks5, twice tunneled"
                # The gateway saw two outer CONNECTs; the workload saw the proxy's own identity on each inner
                # CONNECT (not the gateway's) and the network it came from.
                assert gw.inbound.total == 2
                assert [peer.identity for _, peer in workload.seen] == [ca.spiffe("ns", "proxy")] * 2
                assert all(h["x-forwarded-network"] == "net-2" for h, _ in workload.seen)
                # A route whose workload identity does not match refuses rather than talking to an impostor.
                impostor = {"gateway": f"127.0.0.1:{gw.port}", "identities": ["spiffe://cluster.local/ns/x/sa/y"]}
                wrong = table_from_list([{"double_hbone": impostor}])
                async with serving(lambda: HttpConnectProxy(Dialer(client, wrong)).start("127.0.0.1", 0)) as bad:
                    response, _, w = await http_connect(bad, f"{SVC}:8443")
                    assert not response.startswith(b"HTTP/1.1 200")
                    w.close()
            await client.close()
        await wl_server.close()


def test_double_hbone_route_config_errors() -> None:
    with pytest.raises(ConfigError, match="identities"):
        table_from_list([{"double_hbone": {"gateway": "gw:15008"}}])
    with pytest.raises(ConfigError, match="not both"):
        table_from_list([{"via": "a:15008", "double_hbone": {"gateway": "gw:15008", "identities": ["x"]}}])
    with pytest.raises(ConfigError, match="unknown key"):
        table_from_list([{"double_hbone": {"gateway": "gw:15008", "identities": ["x"], "gw": 1}}])
