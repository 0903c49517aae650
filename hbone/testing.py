"""Public helpers for tests of code built on hbone: a throwaway mesh CA and loopback echo servers."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from hbone.identity.bundle import write_bundle
from hbone.identity.certs import CertificateAuthority, CertifiedKey
from hbone.identity.manager import IdentityManager
from hbone.identity.spiffe import SpiffeId
from hbone.tls import MeshTls


class TestCA:
    """A dev mesh CA for one trust domain that issues workload identities on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "cluster.local", *, intermediate: bool = False) -> None:
        self.trust_domain = trust_domain
        self.root = CertificateAuthority.create_root(trust_domain)
        self.signer = self.root.create_intermediate() if intermediate else self.root

    def spiffe(self, namespace: str, service_account: str) -> SpiffeId:
        return SpiffeId.istio(self.trust_domain, namespace, service_account)

    def issue(
        self,
        namespace: str = "default",
        service_account: str = "default",
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        not_before: dt.datetime | None = None,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
    ) -> CertifiedKey:
        return self.signer.issue(
            self.spiffe(namespace, service_account), ttl=ttl, not_before=not_before, dns=dns, ips=ips
        )

    def write(self, directory: Path, namespace: str = "default", service_account: str = "default") -> Path:
        return write_bundle(directory, self.issue(namespace, service_account))

    def mesh_tls(self, namespace: str = "default", service_account: str = "default") -> MeshTls:
        """TLS contexts for a freshly issued identity that never rotates (what most tests need)."""
        return MeshTls(IdentityManager.fixed(self.issue(namespace, service_account)))


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """A TCP echo server that half-closes after the client does. Returns the server and its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, host, port)
    return server, server.sockets[0].getsockname()[1]
