"""Certificate rotation: keep a workload's certificate fresh and tell whoever builds TLS contexts.

A `CertificateSource` produces a `CertifiedKey` on demand: reloading files written by an external rotator, signing
with a local dev CA, or asking a remote CA (the Istio CA client lives in microxds and plugs in here). The manager
refreshes at half-life (docs/istio.md §3), retries failures with exponential backoff (0.5 s doubling to
150 s) and keeps serving the old certificate until it actually expires. Listeners are called after each rotation;
new connections use the new certificate, existing connections keep the one they were made with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from hbone.errors import CertificateError
from hbone.identity.bundle import Layout, load_bundle
from hbone.identity.certs import DEFAULT_WORKLOAD_TTL, CertificateAuthority, CertifiedKey, now
from hbone.identity.spiffe import SpiffeId

log = logging.getLogger("hbone.identity")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 150.0
# Files written by an external rotator are checked this often; a change is picked up on the next check.
FILE_POLL_INTERVAL = 5.0


class CertificateSource(Protocol):
    async def fetch(self) -> CertifiedKey: ...


class FileSource:
    """Certificates on disk (Istio or SPIFFE layout), replaced in place by something else."""

    def __init__(self, directory: str | os.PathLike[str], layout: Layout | None = None) -> None:
        self.directory = Path(directory)
        self.layout = layout

    async def fetch(self) -> CertifiedKey:
        return await asyncio.to_thread(load_bundle, self.directory, self.layout)

    def fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        out = []
        for p in sorted(self.directory.glob("*.pem")):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_mtime, st.st_size))
        return tuple(out)


class LocalCASource:
    """Issue from an in-process CA (dev mesh, tests)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        identity: SpiffeId,
        ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> None:
        self.ca, self.identity, self.ttl, self.dns, self.ips = ca, identity, ttl, dns, ips

    async def fetch(self) -> CertifiedKey:
        return await asyncio.to_thread(self.ca.issue, self.identity, ttl=self.ttl, dns=self.dns, ips=self.ips)


RotationListener = Callable[[CertifiedKey], Awaitable[None] | None]


class IdentityManager:
    """Holds the current certificate of one identity and keeps it fresh."""

    def __init__(
        self,
        source: CertificateSource,
        *,
        clock: Callable[[], dt.datetime] = now,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        file_poll_interval: float = FILE_POLL_INTERVAL,
    ) -> None:
        self.source = source
        self._clock = clock
        self._current: CertifiedKey | None = None
        self._listeners: list[RotationListener] = []
        self._task: asyncio.Task[None] | None = None
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._file_poll = file_poll_interval
        self._wake = asyncio.Event()
        self._seen: tuple[tuple[str, float, int], ...] = ()
        self.rotations = 0
        self.last_error: str | None = None

    @classmethod
    def fixed(cls, bundle: CertifiedKey) -> IdentityManager:
        """A manager that never rotates (tests, short-lived commands)."""

        class _Fixed:
            async def fetch(self) -> CertifiedKey:
                return bundle

        m = cls(_Fixed())
        m._current = bundle
        return m

    @property
    def current(self) -> CertifiedKey:
        if self._current is None:
            raise CertificateError("no certificate yet: await IdentityManager.start() first")
        return self._current

    @property
    def identity(self) -> SpiffeId | None:
        return self.current.identity

    def on_rotate(self, listener: RotationListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> CertifiedKey:
        """Fetch the first certificate (errors propagate) and start the refresh loop."""
        if isinstance(self.source, FileSource):
            # Fingerprint before the first load, so a replacement racing the start is still noticed.
            self._seen = self.source.fingerprint()
        if self._current is None:
            await self._install(await self.source.fetch())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hbone-cert-rotation")
        return self.current

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def refresh_now(self) -> None:
        """Ask the loop to refresh immediately (e.g. after the CA root changed)."""
        self._wake.set()

    async def _install(self, bundle: CertifiedKey) -> None:
        bundle.check_valid(self._clock())
        self._current = bundle
        self.rotations += 1
        self.last_error = None
        for listener in list(self._listeners):
            try:
                result = listener(bundle)
                if result is not None:
                    await result
            except Exception:  # a broken listener must not stop rotation for everyone else
                log.exception("certificate rotation listener failed")

    def _seconds_until_refresh(self) -> float:
        return max(0.0, (self.current.refresh_at() - self._clock()).total_seconds())

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        backoff = self._backoff_initial
        files = self.source if isinstance(self.source, FileSource) else None
        while True:
            if files is not None:
                # An external rotator owns the files: reload when they change (or at half-life as a safety net).
                await self._sleep(min(self._file_poll, self._seconds_until_refresh() or self._file_poll))
                fp = files.fingerprint()
                if fp == self._seen and self._seconds_until_refresh() > 0:
                    continue
                self._seen = fp
            else:
                await self._sleep(self._seconds_until_refresh())
            try:
                await self._install(await self.source.fetch())
                backoff = self._backoff_initial
            except Exception as e:  # keep the old certificate until it expires; retry with backoff
                self.last_error = str(e)
                left = (self.current.not_after - self._clock()).total_seconds()
                log.warning(
                    "certificate refresh failed (%s); retrying in %.1fs, current cert valid %.0fs more",
                    e,
                    backoff,
                    left,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
