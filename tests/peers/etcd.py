"""A single-member etcd on loopback, and etcdctl against it."""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.peers.process import LOOPBACK, PeerExited, ProcessPeer, arun_peer, free_port, loopback_env, require_binary
from tests.peers.servers import ahttp_get


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
