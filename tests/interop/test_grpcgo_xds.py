"""grpc-go v1.85's proxyless xDS client (`import _ "google.golang.org/grpc/xds"`) resolves `xds:///echo` through
`microxds serve`, calls grpcio backends, and follows an endpoint move pushed over its running ADS stream.

The same resources and backends as the grpcio / grpc-js test (`test_xds_proxyless.py`), so all three proxyless
clients are held to one configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.test_xds_proxyless import bootstrap, wait_answers, write  # `backends`: tests/interop/conftest.py
from tests.interop.test_xds_support import Microxds, by_prefix
from tests.peers import ProcessPeer, loopback_env
from tests.peers.gopeers import require_go_peer

pytestmark = pytest.mark.timeout(120)


async def test_grpc_go_follows_endpoint_move(tmp_path: Path, backends: dict[str, int]) -> None:
    client = require_go_peer("grpc-xds-client")
    config = tmp_path / "xds.json"
    write(config, backends["A"])
    async with Microxds(config) as xds:
        env = loopback_env({"GRPC_XDS_BOOTSTRAP": str(bootstrap(tmp_path, xds.xds_port, "go-client"))})
        go = ProcessPeer([client, "--target", "xds:///echo", "--duration", "90s"], name="grpc-go-xds", env=env)
        with go:
            seen = await wait_answers(go, "A", timeout=60)
            assert await xds.metric('microxds_xds_clients{protocol="sotw"}') == 1

            write(config, backends["B"])  # an EDS push to the running client
            await wait_answers(go, "B", after=seen, timeout=60)
            assert by_prefix(await xds.metrics(), "microxds_xds_nacks_total") == 0
