"""Config from a file or a directory, watched by polling.

`load(path)` reads a file, or every `*.yaml|*.yml|*.json` in a directory (sorted, not recursive, hidden files
skipped), and validates them together (yamlconfig.py). `FileSource.run()`/`watch()` poll the entries' (mtime, size)
every `interval` seconds, re-read and hash the contents only when those change (or every `rescan` seconds, to
catch same-size rewrites within one mtime tick), wait for the files to be quiet for `debounce` seconds, then
reload. A valid new config is passed to `on_change`; an invalid one is logged as `file:line: reason` and the last
good config stays in force (`last_error` says why). Polling works on every filesystem, including bind mounts and
Kubernetes ConfigMap symlink swaps, where inotify misses changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from hbone.errors import ConfigError as HboneConfigError
from hbone.safeyaml import MAX_CONFIG_BYTES, read_limited

from ..errors import ConfigError
from .configsnapshot import ConfigSnapshot
from .yamlconfig import parse_texts

log = logging.getLogger("microxds.sources.files")

SUFFIXES = (".yaml", ".yml", ".json")
OnChange = Callable[[ConfigSnapshot], Awaitable[None] | None]


def config_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files that make up the config at `path` (a file, or a directory's config files, sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and not f.name.startswith(".") and f.is_file())
    if not p.exists():
        raise ConfigError("no such file or directory", file=str(p))
    return [p]


def read_texts(files: list[Path], limit: int = MAX_CONFIG_BYTES) -> list[tuple[str, str]]:
    """The files' texts; each file and all of them together at most `limit` bytes, checked before parsing (a
    50 MB file took minutes and GBs to parse and blocked every reload meanwhile)."""
    out = []
    left = limit
    for f in files:
        try:
            text = read_limited(f, limit=left)
        except HboneConfigError as exc:
            why = str(exc).removeprefix(f"{f}: ")
            if left < limit and "limited to" in why:
                why = f"the config files together exceed {limit:,} bytes"
            raise ConfigError(why, file=str(f)) from None
        left -= len(text.encode("utf-8")) if not text.isascii() else len(text)
        out.append((str(f), text))
    return out


def load_texts(texts: Iterable[tuple[str, str]]) -> ConfigSnapshot:
    """Validate `(file name, text)` pairs as one config: every check `serve` and `validate` apply."""
    return parse_texts(texts)


def load(path: str | os.PathLike[str]) -> ConfigSnapshot:
    """Load and validate the config at `path`. Raises ConfigError with `file:line: reason`."""
    return load_texts(read_texts(config_files(path)))


def _stat_key(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue  # vanished between listing and stat: the next poll sees the new listing
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _content_hash(texts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, text in texts:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


class FileSource:
    """A watched config path. Build it, `await initial()` (or `load_now()`), then run `run(on_change)` as a task."""

    def __init__(
        self, path: str | os.PathLike[str], *, interval: float = 0.2, debounce: float = 0.1, rescan: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.debounce = debounce
        self.rescan = rescan
        self.snapshot: ConfigSnapshot | None = None
        self.last_error: ConfigError | None = None
        self.last_error_at: float | None = None
        self.reloads = 0
        self.rejected = 0
        self._stat: tuple[tuple[str, int, int], ...] | None = None
        self._hash: str | None = None

    def load_now(self) -> ConfigSnapshot | None:
        """Read and validate once. Returns the new snapshot if the content changed and is valid, else None."""
        try:
            files = config_files(self.path)
        except ConfigError as exc:
            self._stat = ()
            self._reject(exc, "missing")
            return None
        self._stat = _stat_key(files)
        try:
            texts = read_texts(files)
        except ConfigError as exc:
            self._reject(exc, None)
            return None
        digest = _content_hash(texts)
        if digest == self._hash:
            return None
        try:
            snap = load_texts(texts)
        except ConfigError as exc:
            self._reject(exc, digest)
            return None
        except Exception as exc:
            self._reject(ConfigError(f"cannot load: {type(exc).__name__}: {exc}", file=str(self.path)), digest)
            return None
        self._hash = digest
        self.snapshot = snap
        self.last_error = None
        self.reloads += 1
        for warning in snap.warnings:
            log.warning("config warning: %s", warning)
        log.info("config loaded from %s: %d resources, version %s", self.path, snap.count(), snap.version)
        return snap

    def _reject(self, exc: ConfigError, digest: str | None) -> None:
        # Remember the bad content's hash so an unchanged bad file is not re-reported every poll.
        self._hash = digest
        self.last_error = exc
        self.last_error_at = time.time()
        self.rejected += 1
        keeping = f"keeping version {self.snapshot.version}" if self.snapshot else "no config loaded yet"
        log.error("invalid config, %s:\n%s", keeping, exc)

    def _changed(self) -> bool:
        try:
            return _stat_key(config_files(self.path)) != self._stat
        except ConfigError:
            return self._stat != ()

    async def run(self, on_change: OnChange, on_error: Callable[[ConfigError], None] | None = None) -> None:
        """Poll forever (cancel the task to stop). Calls `on_change` only with valid, changed configs.

        `on_error` (optional) is told about each newly rejected config, e.g. to update a status page or metric.
        """
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            full = loop.time() - last_full >= self.rescan
            try:
                if not full and not await asyncio.to_thread(self._changed):
                    continue
                last_full = loop.time()
                await self._reload(on_change, on_error)
            except Exception:  # the watcher outlives any one reload: the last good config stays served
                log.exception("config reload from %s failed; keeping the last good config", self.path)

    async def _reload(self, on_change: OnChange, on_error: Callable[[ConfigError], None] | None) -> None:
        # Debounce: editors and `kubectl cp` write in several steps; wait until the stat is stable.
        while True:
            before = await asyncio.to_thread(_stat_key, self._files_or_empty())
            await asyncio.sleep(self.debounce)
            if await asyncio.to_thread(_stat_key, self._files_or_empty()) == before:
                break
        rejected = self.rejected
        snap = await asyncio.to_thread(self.load_now)
        if snap is not None:
            result = on_change(snap)
            if inspect.isawaitable(result):
                await result
        elif on_error is not None and self.rejected != rejected and self.last_error is not None:
            on_error(self.last_error)

    def _files_or_empty(self) -> list[Path]:
        try:
            return config_files(self.path)
        except ConfigError:
            return []


async def watch(
    path: str | os.PathLike[str],
    on_change: OnChange,
    *,
    interval: float = 0.2,
    debounce: float = 0.1,
    initial: bool = True,
) -> None:
    """Watch `path` forever, calling `on_change(snapshot)` for each valid new config.

    With `initial=True` the current config is loaded first and passed to `on_change` if valid. Cancel to stop.
    For status (last error, reload counts) build a FileSource and call its `run()` instead.
    """
    source = FileSource(path, interval=interval, debounce=debounce)
    if initial:
        snap = await asyncio.to_thread(source.load_now)
        if snap is not None:
            result = on_change(snap)
            if inspect.isawaitable(result):
                await result
    else:
        await asyncio.to_thread(source.load_now)  # the baseline: only later changes are reported
    await source.run(on_change)
