"""Peer availability (skip locally, fail in CI), ports, and child processes that are always cleaned up."""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "tests" / "interop" / "node"
INSTALL_HINT = "run tools/install-peers.sh"
LOOPBACK = "127.0.0.1"
# Flags for every daemon a test starts: never the fixed default admin ports (15000/15020/15021), which collide
# between tests and between engineers running tests at the same time.
NO_ADMIN = ("--admin", "off", "--metrics", "off", "--readiness", "off")


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


async def stop_process(
    proc: asyncio.subprocess.Process, timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Stop an asyncio subprocess: `sig` (a graceful drain), wait up to `timeout`, then SIGKILL. Idempotent."""
    if proc.returncode is not None:
        return
    proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


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
