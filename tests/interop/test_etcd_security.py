"""The etcd store over TLS with client certificates, and with etcd's user/password authentication (real etcd)."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import pytest

from hbone.testing import TestCA
from microxds.cli import main
from microxds.errors import StoreError, Unavailable
from microxds.etcd.client import EtcdClient
from microxds.resources import ENDPOINT
from tests.peers import Etcd, require_binary
from tests.peers.xds_store import PREFIX, cla_value, key

pytestmark = pytest.mark.timeout(90)


class TlsEtcd(Etcd):
    """etcd whose client port speaks TLS only and requires a client certificate signed by `ca_dir`'s CA."""

    def __init__(self, certs: Path) -> None:
        self.certs = certs
        super().__init__("etcd-tls")

    def _pick_ports(self, name: str) -> list[str | os.PathLike[str]]:
        args = super()._pick_ports(name)
        client_http = f"http://127.0.0.1:{self.client_port}"
        args = [a.replace(client_http, f"https://127.0.0.1:{self.client_port}") if isinstance(a, str) else a
                for a in args]  # fmt: skip
        return [*args, "--cert-file", self.certs / "cert-chain.pem", "--key-file", self.certs / "key.pem",
                "--trusted-ca-file", self.certs / "root-cert.pem", "--client-cert-auth"]  # fmt: skip

    async def wait_ready(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        async with EtcdClient([f"127.0.0.1:{self.client_port}"], ssl=client_ssl(self.certs), timeout=2) as c:
            while True:
                self.check_running()
                try:
                    await c.range_prefix("/")
                    return
                except (Unavailable, StoreError):
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.05)  # poll interval, not synchronisation


def client_ssl(certs: Path, *, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "root-cert.pem"))
    if with_cert:
        ctx.load_cert_chain(str(certs / "cert-chain.pem"), str(certs / "key.pem"))
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_store_over_tls_with_client_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("etcd")
    ca = TestCA()
    server, client = ca.write(tmp_path / "server", "etcd", "server"), ca.write(tmp_path / "client", "ops", "apply")
    async with TlsEtcd(server) as etcd:
        async with EtcdClient([f"127.0.0.1:{etcd.client_port}"], ssl=client_ssl(client)) as c:
            await c.put(key(ENDPOINT, "web"), cla_value("web", 1))
        # Without a client certificate the handshake is refused: no answer from any endpoint.
        async with EtcdClient([f"127.0.0.1:{etcd.client_port}"], ssl=client_ssl(client, with_cert=False)) as c:
            with pytest.raises(Unavailable):
                await c.range_prefix(PREFIX)
        url = f"etcds://127.0.0.1:{etcd.client_port}{PREFIX.rstrip('/')}"
        tls = ["--store-cacert", str(client / "root-cert.pem"), "--store-cert", str(client / "cert-chain.pem"),
               "--store-key", str(client / "key.pem")]  # fmt: skip
        assert await asyncio.to_thread(main, ["get", "--store", url, *tls]) == 0
        assert key(ENDPOINT, "web") in capsys.readouterr().out


async def test_store_with_etcd_user_and_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("etcd")
    require_binary("etcdctl")
    async with Etcd() as etcd:
        await etcd.ctl("user", "add", "root:s3cret")
        await etcd.ctl("auth", "enable")
        endpoint = [f"127.0.0.1:{etcd.client_port}"]
        async with EtcdClient(endpoint, user="root", password="s3cret") as c:
            await c.put(key(ENDPOINT, "web"), cla_value("web", 1))
            assert len((await c.range_prefix(PREFIX)).kvs) == 1
        async with EtcdClient(endpoint) as anonymous:
            with pytest.raises(StoreError, match=r"user name is empty|permission denied|token"):
                await anonymous.range_prefix(PREFIX)
        async with EtcdClient(endpoint, user="root", password="wrong") as c:
            with pytest.raises(StoreError, match="authentication failed"):
                await c.range_prefix(PREFIX)
        pw = tmp_path / "pw"
        pw.write_text("s3cret\n")
        url = f"etcd://127.0.0.1:{etcd.client_port}{PREFIX.rstrip('/')}"
        args = ["get", "--store", url, "--store-user", "root", "--store-password-file", str(pw)]
        assert await asyncio.to_thread(main, args) == 0
        assert key(ENDPOINT, "web") in capsys.readouterr().out
