"""Shared helpers for the microxds interop tests (no tests here): the real `microxds serve` CLI as a subprocess,
Envoy ADS bootstraps, tagged TCP backends, and small grpcio clients for CSDS.

Synchronisation is always by polling an observable (a log line, a Prometheus counter, an Envoy stat) with a
deadline; never by sleeping a guessed amount.
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.peers import LOOPBACK, ProcessPeer, ahttp_get, envoy_static_cluster, loopback_env

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
CLUSTER_T = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_T = "type.googleapis.com/envoy.config.listener.v3.Listener"
_ADDR = re.compile(r"microxds: (\w+) listening on ([\d.:a-f\[\]]+):(\d+)")


class Microxds(ProcessPeer):
    """`python -m microxds.cli serve` on loopback ports it picks itself, read back from its stdout."""

    def __init__(self, config: Path | None, *extra: str, store: str | None = None) -> None:
        source = ["--store", store] if store is not None else ["--config", str(config)]
        args = [
            sys.executable, "-m", "microxds.cli", "serve", *source,
            "--listen", f"{LOOPBACK}:0", "--metrics-listen", f"{LOOPBACK}:0",
            "--poll-interval", "0.05", "--debounce-quiet", "0.05", "--debounce-max", "0.5", *extra,
        ]  # fmt: skip
        env = loopback_env({"PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        super().__init__(args, name="microxds", env=env)
        self.addresses: dict[str, tuple[str, int]] = {}

    async def start_ready(self, timeout: float = 20.0) -> Self:
        self.start()
        deadline = time.monotonic() + timeout
        while "metrics" not in self.addresses:
            self.check_running()
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.addresses = {m[1]: (m[2], int(m[3])) for m in _ADDR.finditer(text)}
            if time.monotonic() > deadline:
                raise TimeoutError(f"microxds did not report its listeners\n{self.log_tail()}")
            await asyncio.sleep(0.02)  # poll interval, not synchronisation
        return self

    async def __aenter__(self) -> Self:
        return await self.start_ready()

    @property
    def xds_port(self) -> int:
        return self.addresses["plaintext"][1]

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.xds_port}"

    async def metrics(self) -> dict[str, float]:
        """Samples by `name{label="v",...}` (labels sorted), plus the bare name for unlabelled samples."""
        host, port = self.addresses["metrics"]
        status, body = await ahttp_get(f"http://{host}:{port}/metrics")
        assert status == 200, body
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    async def metric(self, name: str) -> float:
        return (await self.metrics()).get(name, 0.0)

    async def wait_metric(self, name: str, predicate: Callable[[float], bool], timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.metric(name)
            if predicate(value):
                return value
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"metric {name} = {value} not satisfied within {timeout}s\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not synchronisation


def write_config(path: Path, resources: list[dict[str, Any]]) -> None:
    """Replace the config file atomically (write + rename), as editors and config management tools do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"resources": resources}, sort_keys=False))
    os.replace(tmp, path)


def static_cluster(name: str, port: int) -> dict[str, Any]:
    return {"@type": CLUSTER_T, **envoy_static_cluster(name, port), "connect_timeout": "1s"}


def tcp_listener(name: str, cluster: str) -> dict[str, Any]:
    """A tcp_proxy listener on 127.0.0.1:0 (Envoy picks the port; read it from /listeners)."""
    return {
        "@type": LISTENER_T,
        "name": name,
        "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
        "stat_prefix": name,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster},
        }]}],
    }  # fmt: skip


def envoy_ads_bootstrap(xds_port: int, api_type: str, node_id: str = "envoy-1") -> dict[str, Any]:
    """The recipe of docs/interop.md: ADS over GRPC or DELTA_GRPC, CDS and LDS from ADS."""
    return {
        "node": {"id": node_id, "cluster": "interop"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [envoy_static_cluster("xds_cluster", xds_port, http2=True)]},
    }


async def start_tag_server(tag: bytes) -> tuple[asyncio.Server, int]:
    """A TCP backend that writes `tag` and closes: which backend answered is visible through any proxy."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(tag)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    return server, int(server.sockets[0].getsockname()[1])


async def read_tag(port: int, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout)
    try:
        return await asyncio.wait_for(reader.read(100), timeout)
    finally:
        writer.close()


async def wait_tag(port: int, want: bytes, timeout: float = 10.0) -> None:
    """Poll connections through the proxy until `want` answers (each attempt bounded)."""
    deadline = time.monotonic() + timeout
    got: bytes | str = b""
    while True:
        try:
            got = await read_tag(port)
        except (OSError, TimeoutError) as exc:
            got = repr(exc)
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {want!r} through port {port}, last got {got!r}")
        await asyncio.sleep(0.05)  # poll interval, not synchronisation


def by_prefix(metrics: Mapping[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))
