"""The Go peers built from ``tests/peers/go`` by ``tools/go-peers.sh`` (run by ``tools/install-peers.sh``).

Each long-running Go peer binds port 0 itself and prints one line ``ready xds=HOST:PORT control=HOST:PORT``
(our own mains) or logs its ports (istio's programs); the classes here read the addresses back, so tests never
guess a free port. Missing binaries skip locally and fail with ``CI=true`` (see :func:`missing_peer`).
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from hbone.identity.bundle import write_bundle
from hbone.identity.certs import CertificateAuthority, cert_to_pem, key_to_pem
from hbone.identity.spiffe import SpiffeId
from tests.peers.process import LOOPBACK, REPO_ROOT, ProcessPeer, loopback_env, missing_peer

GO_PEERS_SCRIPT = REPO_ROOT / "tools" / "go-peers.sh"
_READY = re.compile(rb"^ready xds=(\S+):(\d+) control=(\S+):(\d+)$", re.M)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@functools.cache
def go_peers_dir() -> Path | None:
    """Where this source tree's Go peers are (``HBONE_GO_PEERS`` overrides), or None without Go."""
    if override := os.environ.get("HBONE_GO_PEERS"):
        return Path(override)
    try:
        out = subprocess.run(
            ["bash", str(GO_PEERS_SCRIPT), "dir"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def require_go_peer(name: str) -> Path:
    """Path of one Go peer binary (gcp-ads, grpc-xds-client, istiod-fake, echo-client, echo-server, h2spec)."""
    base = go_peers_dir()
    if base is None:
        missing_peer(f"Go peer {name}: the go toolchain is not installed (tools/install-peers.sh builds the Go peers)")
    path = base / name
    if not os.access(path, os.X_OK):
        missing_peer(f"Go peer {name} not built in {base}: run tools/install-peers.sh (or tools/go-peers.sh build)")
    return path


def http_call(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request to a peer's control port (no proxy); returns (status, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


class ReadyPeer(ProcessPeer):
    """A Go peer of ours that prints ``ready xds=… control=…`` once both of its listeners are bound."""

    xds_port: int = 0
    control_port: int = 0

    async def wait_ready(self, timeout: float = 60.0) -> Self:
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = _READY.search(self.log_path.read_bytes())
            except OSError:
                m = None
            if m is not None:
                self.xds_port, self.control_port = int(m.group(2)), int(m.group(4))
                return self
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout}s\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not synchronisation

    @property
    def xds_address(self) -> str:
        return f"{LOOPBACK}:{self.xds_port}"

    async def control(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        url = f"http://{LOOPBACK}:{self.control_port}{path}"
        return await asyncio.to_thread(http_call, url, method, body)

    async def control_ok(self, method: str, path: str, body: bytes | None = None) -> bytes:
        status, out = await self.control(method, path, body)
        assert status == 200, f"{method} {path}: {status} {out!r}\n{self.log_tail()}"
        return out

    async def control_json_lines(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (await self.control_ok("GET", path)).splitlines() if line.strip()]


class GoControlPlane(ReadyPeer):
    """``gcp-ads``: go-control-plane v0.14 (LinearCache per type, SotW + Delta ADS) serving a JSON file.

    Entries are ``{"name": optional, "resource": {"@type": …, …}}``; :meth:`put` replaces one resource through
    the control port, :meth:`requests` lists every request the server received (with any ``error_detail``).
    """

    def __init__(self, config: Path, *, xds_port: int = 0, record: bool = True, **kw: Any) -> None:
        args: list[str | os.PathLike[str]] = [
            require_go_peer("gcp-ads"),
            "--config",
            config,
            "--xds",
            f"{LOOPBACK}:{xds_port}",
            f"--record={str(record).lower()}",
        ]
        super().__init__(args, name="gcp-ads", env=loopback_env(), **kw)

    @staticmethod
    def write_config(path: Path, resources: Sequence[Mapping[str, Any]]) -> Path:
        path.write_text(json.dumps({"resources": [entry(r) for r in resources]}))
        return path

    async def put(self, resource: Mapping[str, Any], name: str | None = None) -> None:
        await self.control_ok("PUT", "/resource", json.dumps(entry(resource, name)).encode())

    async def requests(self) -> list[dict[str, Any]]:
        return await self.control_json_lines("/requests")


def entry(resource: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """A gcp-ads file entry; names of Istio types (which go-control-plane cannot derive) come from the resource."""
    out: dict[str, Any] = {"resource": dict(resource)}
    if name is None and resource["@type"].startswith("type.googleapis.com/istio."):
        name = str(resource.get("name") or "")
    if name:
        out["name"] = name
    return out


def istiod_certs(ca: CertificateAuthority, trust_domain: str, workdir: Path) -> tuple[Path, Path]:
    """For ``IstiodFake(tls=..., cacerts=...)``, under ``workdir``: istiod's serving bundle issued by ``ca`` (its
    SPIFFE id, DNS name and the loopback address) and istio's plugged-in CA directory with ``ca`` as the root."""
    cacerts = workdir / "cacerts"
    cacerts.mkdir()
    for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
        (cacerts / name).write_bytes(cert_to_pem(ca.cert))
    (cacerts / "ca-key.pem").write_bytes(key_to_pem(ca.key))
    istiod = SpiffeId.parse(f"spiffe://{trust_domain}/ns/istio-system/sa/istiod")
    serving = write_bundle(workdir / "istiod-tls", ca.issue(istiod, dns=["istiod.istio-system.svc"], ips=[LOOPBACK]))
    return serving, cacerts


class IstiodFake(ReadyPeer):
    """``istiod-fake``: istiod's discovery server on a fake Kubernetes cluster fed from YAML (ambient on).

    With ``tls`` (a cert-chain.pem/key.pem directory) its xDS port is TLS like istiod's 15012, and with ``cacerts``
    (plugged-in ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) it also serves istio's CA there; ``token``
    is the bearer token of the pod ``pod`` (NS/NAME), whose service account may impersonate pods on its node when
    listed in ``trusted_node_accounts`` (CA_TRUSTED_NODE_ACCOUNTS).
    """

    def __init__(
        self,
        objects: Path,
        *,
        token: str = "",
        pod: str = "",
        tls: Path | None = None,
        cacerts: Path | None = None,
        trusted_node_accounts: str = "",
        **kw: Any,
    ) -> None:
        args: list[str | os.PathLike[str]] = [require_go_peer("istiod-fake"), "--objects", objects]
        if token:
            args += ["--token", token]
        if pod:
            args += ["--pod", pod]
        if tls is not None:
            args += ["--tls-cert", tls / "cert-chain.pem", "--tls-key", tls / "key.pem"]
        if cacerts is not None:
            args += ["--cacerts", cacerts]
        env = loopback_env({"PILOT_ENABLE_AMBIENT": "true", "CA_TRUSTED_NODE_ACCOUNTS": trusted_node_accounts})
        super().__init__(args, name="istiod-fake", env=env, **kw)

    async def apply(self, yaml_text: str) -> None:
        await self.control_ok("PUT", "/objects", yaml_text.encode())

    async def delete(self, yaml_text: str) -> None:
        await self.control_ok("DELETE", "/objects", yaml_text.encode())

    async def callers(self) -> list[dict[str, Any]]:
        return await self.control_json_lines("/callers")
