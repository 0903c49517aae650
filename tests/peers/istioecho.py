"""istio's echo programs (`pkg/test/echo/cmd/{server,client}`), an independent Go HBONE implementation
(`istio.io/istio/pkg/hbone`, on golang.org/x/net/http2), as test peers.

The server binds every port it is given as 0 and logs the real ones (``Listening HBONE on N``); the client runs
istio's forwarder in-process, so ``--hbone H:P`` makes it open a CONNECT tunnel with the client certificate given.
"""

# ruff: noqa: ASYNC109  (a deadline argument is the API of these polling helpers)
from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from tests.peers.gopeers import require_go_peer
from tests.peers.process import ProcessPeer, arun_peer, free_port, loopback_env

_LISTEN = re.compile(r"Listening (HTTP/1\.1|GRPC|TCP|HBONE)(?: \((?:plaintext|over TLS)\))? on (\d+)")


class EchoServer(ProcessPeer):
    """istio's echo server with HTTP, gRPC and TCP on ephemeral ports, plus HBONE when `hbone` is set.

    With `certs` (Istio layout dir) the HBONE port is TLS (server-auth only: istio's echo does not ask for client
    certificates); without, it is h2c. istio marks ports as TLS by number, so with TLS every port of this instance
    (all bound as 0) is TLS too; use a second instance for a plain application port.
    """

    def __init__(
        self, *, hbone: bool = False, certs: Path | None = None, proxy_protocol: bool = False, **kw: Any
    ) -> None:
        args: list[str | os.PathLike[str]] = [require_go_peer("echo-server"), "--port", "0", "--grpc", "0",
                                              "--tcp", "0"]  # fmt: skip
        if hbone:
            args += ["--hbone", "0"]
        if proxy_protocol:
            # istio matches ports by number, so the TCP port gets its own (just-free) number: with 0 every port
            # would expect a PROXY header and the server's own readiness probes (plain HTTP/gRPC) would fail.
            port = free_port()
            args[args.index("--tcp") + 1] = str(port)
            args += ["--proxy-protocol", str(port)]
        if certs is not None:
            args += ["--tls", "0", "--crt", certs / "cert-chain.pem", "--key", certs / "key.pem"]
        super().__init__(args, name="istio-echo-server", env=loopback_env(), **kw)
        self.ports: dict[str, int] = {}

    async def wait_ready(self, timeout: float = 30.0) -> Self:
        want = {"HBONE"} if "--hbone" in self.args else {"HTTP/1.1", "GRPC", "TCP"}
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.ports = {m[1]: int(m[2]) for m in _LISTEN.finditer(text)}
            if want <= set(self.ports):
                return self
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"istio echo server did not report its ports\n{self.log_tail()}")
            await asyncio.sleep(0.05)  # poll interval, not synchronisation


async def echo_client(
    url: str, *, hbone: str, certs: Path, ca: Path | None = None, headers: Sequence[str] = (), timeout: float = 60
) -> tuple[int, str]:
    """One istio echo client run through the HBONE proxy at `hbone`; returns (exit code, stdout + stderr)."""
    args: list[str | os.PathLike[str]] = [require_go_peer("echo-client"), url, "--hbone", hbone,
                                          "--hbone-client-cert", certs / "cert-chain.pem",
                                          "--hbone-client-key", certs / "key.pem", "--timeout", "20s"]  # fmt: skip
    if ca is not None:
        args += ["--hbone-ca", ca]
    else:
        args += ["--hbone-insecure-skip-verify"]
    for h in headers:
        # -M is a cobra StringSlice: one CSV record, so quote it (baggage has commas, forwarded has quotes).
        args += ["-M", '"' + h.replace('"', '""') + '"']
    out = await arun_peer(args, timeout=timeout, env=loopback_env())
    return out.returncode, out.stdout + out.stderr
