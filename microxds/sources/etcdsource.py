"""Config from etcd: load a prefix, then watch it from the loaded revision, one validated key at a time.

    load:   Range(PREFIX)                          -> every key, at revision R
    watch:  Watch(PREFIX, start_revision = R + 1)  -> every change after R, in revision order

etcd keeps its history until it is compacted, so starting the watch at R + 1 loses nothing that happened between
the two calls, and a watch broken by a lost connection resumes at `revision + 1` the same way. When etcd has
compacted that revision away (`Compacted`) the source reloads the whole prefix and watches again; it never
crashes on it.

Each changed key is validated on its own (`storekeys.parse_entry`). An invalid value is rejected with its key and
reason (`last_error`, `rejected`, the `on_error` callback) and that key keeps its last good value, so the config
being served is always the last good one; every other change still applies. After a batch of events (one etcd
revision, or a transaction) the valid entries are assembled into a new `ConfigSnapshot`, which goes to
`on_change` only if its content version changed. `revision` is the etcd revision the snapshot reflects.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from .._pb.etcd.mvccpb import kv_pb2
from ..client.state import Backoff
from ..errors import Compacted, ConfigError, ConfigErrors, StoreError, Unavailable
from ..etcd.client import EtcdClient
from .configsnapshot import ConfigSnapshot
from .references import check_references
from .storekeys import Entry, assemble, parse_entry

log = logging.getLogger("microxds.sources.etcd")

OnChange = Callable[[ConfigSnapshot], Awaitable[None] | None]
OnError = Callable[[ConfigError], None]


class EtcdSource:
    """A watched etcd prefix. `await initial()`, then run `run(on_change, on_error)` as a task."""

    def __init__(self, client: EtcdClient, prefix: str, *, backoff: Backoff | None = None) -> None:
        if not prefix.endswith("/"):
            raise ConfigError(f"store prefix {prefix!r} must end with '/'")
        self.client = client
        self.prefix = prefix
        self.backoff = backoff or Backoff(0.1, 5.0)
        self.revision = 0  # the etcd revision the current snapshot reflects
        self.snapshot: ConfigSnapshot | None = None
        self.entries: dict[str, Entry] = {}  # key -> last good entry
        self.errors: dict[str, ConfigError] = {}  # key -> why its current value is rejected
        self.last_error: ConfigError | None = None
        self.last_error_at: float | None = None
        self.reloads = 0  # full loads (start, compaction)
        self.rejected = 0
        self.events = 0

    # -- loading ------------------------------------------------------------------------------------------------

    async def initial(self) -> ConfigSnapshot:
        """The first load; raises Unavailable when etcd cannot be reached."""
        await self._load(keep_good=False)
        snap, errors = self._assemble()
        if errors:
            raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
        self.snapshot = snap
        return snap

    def _assemble(self) -> tuple[ConfigSnapshot, list[ConfigError]]:
        """The config of the valid keys, and its cross-reference errors (what clients would NACK), located at keys."""
        snap = assemble(self.entries.values())
        errors, warnings = check_references(snap)
        if warnings and not errors:
            snap = replace(snap, warnings=tuple(str(w) for w in warnings))
        return snap, errors

    async def _load(self, *, keep_good: bool) -> list[ConfigError]:
        resp = await self.client.range_prefix(self.prefix)
        fresh: list[ConfigError] = []
        present: set[str] = set()
        for kv in resp.kvs:
            key = kv.key.decode("utf-8", "replace")
            present.add(key)
            error = self._apply_put(key, kv.value, keep_good=keep_good)
            if error is not None:
                fresh.append(error)
        for key in [k for k in self.entries if k not in present]:
            del self.entries[key]  # deleted while our history was compacted away
        for key in [k for k in self.errors if k not in present]:
            del self.errors[key]
        self.revision = resp.header.revision
        self.reloads += 1
        log.info(
            "loaded %d keys from %s%s at revision %d: %d valid, %d invalid",
            len(resp.kvs), self.client.endpoint, self.prefix, self.revision, len(self.entries), len(self.errors),
        )  # fmt: skip
        return fresh

    def _apply_put(self, key: str, value: bytes, *, keep_good: bool = True) -> ConfigError | None:
        try:
            entry = parse_entry(self.prefix, key, value)
        except ConfigError as exc:
            self.errors[key] = exc
            if not keep_good:
                self.entries.pop(key, None)
            self._reject(exc, key)
            return exc
        self.entries[key] = entry
        self.errors.pop(key, None)
        return None

    def _apply_delete(self, key: str) -> None:
        self.entries.pop(key, None)
        self.errors.pop(key, None)

    def _reject(self, exc: ConfigError, key: str) -> None:
        self.last_error = exc
        self.last_error_at = time.time()
        self.rejected += 1
        kept = (
            "keeping the last good config"
            if not key
            else "keeping its last good value"
            if key in self.entries
            else "ignoring it"
        )
        log.error("invalid config in etcd, %s: %s", kept, exc)

    # -- watching -----------------------------------------------------------------------------------------------

    async def run(self, on_change: OnChange, on_error: OnError | None = None) -> None:
        """Watch forever (cancel the task to stop): reconnects, resumes from `revision + 1`, reloads when compacted."""
        while True:
            try:
                async for resp in self.client.watch_prefix(self.prefix, self.revision + 1):
                    self.backoff.reset()
                    if resp.events:
                        errors = self._apply_events(resp.events)
                        # Resume after the last event seen (clientv3 does the same): the header's revision may
                        # be ahead of events still to come on this stream.
                        self.revision = max(self.revision, resp.events[-1].kv.mod_revision)
                        await self._publish(on_change, on_error, errors)
                    elif not resp.created:
                        # A progress notification: every later event has a higher revision (rpc.proto).
                        self.revision = max(self.revision, resp.header.revision)
            except Compacted as exc:
                log.warning("etcd history compacted (%s): reloading %s", exc, self.prefix)
                errors = await self._retrying(lambda: self._load(keep_good=True))
                await self._publish(on_change, on_error, errors)
                continue
            except (Unavailable, StoreError) as exc:
                delay = self.backoff.next()
                log.warning("etcd watch on %s broke (%s); resuming at revision %d in %.1fs",
                            self.prefix, exc, self.revision + 1, delay)  # fmt: skip
                await asyncio.sleep(delay)

    def _apply_events(self, events: Sequence[kv_pb2.Event]) -> list[ConfigError]:
        errors: list[ConfigError] = []
        for ev in events:
            self.events += 1
            key = ev.kv.key.decode("utf-8", "replace")
            if ev.type == kv_pb2.Event.DELETE:
                self._apply_delete(key)
            elif (error := self._apply_put(key, ev.kv.value)) is not None:
                errors.append(error)
        return errors

    async def _publish(self, on_change: OnChange, on_error: OnError | None, errors: list[ConfigError]) -> None:
        if on_error is not None:
            for error in errors:
                on_error(error)
        snap, ref_errors = self._assemble()
        if ref_errors:
            # Every key is valid alone, but together they reference what is missing: keep the last good config.
            for error in ref_errors:
                self._reject(error, "")
                if on_error is not None:
                    on_error(error)
            return
        if self.snapshot is not None and snap.version == self.snapshot.version:
            return
        self.snapshot = snap
        result = on_change(snap)
        if inspect.isawaitable(result):
            await result

    async def _retrying(self, load: Callable[[], Awaitable[list[ConfigError]]]) -> list[ConfigError]:
        while True:
            try:
                return await load()
            except (Unavailable, StoreError) as exc:
                delay = self.backoff.next()
                log.warning("etcd reload of %s failed (%s); retrying in %.1fs", self.prefix, exc, delay)
                await asyncio.sleep(delay)
