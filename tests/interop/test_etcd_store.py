"""The etcd config store against a real etcd: load + watch without losing a revision, atomic `apply` seen by every
replica, compaction, invalid keys, and the `apply`/`get` commands."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microxds.cli import main
from microxds.errors import ConfigError
from microxds.etcd.client import EtcdClient
from microxds.resources import CLUSTER, ENDPOINT
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.etcdsource import EtcdSource
from microxds.sources.storekeys import parse_entry
from tests.peers import Etcd, require_binary
from tests.peers.xds_store import PREFIX, cla_value, cluster_value, key

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def etcd() -> AsyncIterator[Etcd]:
    require_binary("etcd")
    async with Etcd() as peer:
        yield peer


@pytest.fixture
async def client(etcd: Etcd) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([f"127.0.0.1:{etcd.client_port}"]) as c:
        yield c


class Recorder:
    """Runs an EtcdSource and keeps every snapshot it publishes; `until(pred)` waits for one that passes."""

    def __init__(self, source: EtcdSource) -> None:
        self.source = source
        self.snapshots: list[ConfigSnapshot] = []
        self.errors: list[ConfigError] = []
        self._pulse = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.snapshots.append(await self.source.initial())
        self.run()

    def run(self) -> None:
        self._task = asyncio.create_task(self.source.run(self._on_change, self._on_error))

    def _on_change(self, snap: ConfigSnapshot) -> None:
        self.snapshots.append(snap)
        self._pulse.set()

    def _on_error(self, error: ConfigError) -> None:
        self.errors.append(error)
        self._pulse.set()

    async def until_revision(self, revision: int, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Wait until the source has seen `revision` (it publishes or reports an error for every watch batch)."""
        async with asyncio.timeout(timeout):
            while self.source.revision < revision:
                self._pulse.clear()
                await self._pulse.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def ports(snap: ConfigSnapshot) -> dict[str, int]:
    from envoy.config.endpoint.v3 import endpoint_pb2

    out = {}
    for name, res in snap.resources.get(ENDPOINT, {}).items():
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(res.value)
        out[name] = cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
    return out


async def store_versions(client: EtcdClient) -> dict[str, str]:
    resp = await client.range_prefix(PREFIX)
    return {kv.key.decode(): parse_entry(PREFIX, kv.key.decode(), kv.value).resource.version for kv in resp.kvs}


async def test_load_then_watch_misses_no_concurrent_write(client: EtcdClient, etcd: Etcd) -> None:
    for i in range(20):
        await client.put(key(ENDPOINT, f"svc{i}"), cla_value(f"svc{i}", 1000))

    last_revision = 0

    async def writer() -> None:
        nonlocal last_revision
        for n in range(1, 121):  # rewrites and deletes race the load and the watch's creation
            name = f"svc{n % 25}"
            if n % 13 == 0:
                resp = await client.delete(key(ENDPOINT, name))
                last_revision = max(last_revision, resp.header.revision)
            else:
                put = await client.put(key(ENDPOINT, name), cla_value(name, 1000 + n))
                last_revision = max(last_revision, put.header.revision)

    async with EtcdClient([f"127.0.0.1:{etcd.client_port}"]) as reader:
        rec = Recorder(EtcdSource(reader, PREFIX))
        write = asyncio.create_task(writer())
        await asyncio.sleep(0)  # let the writer's first put go out before the load
        await rec.start()
        await write
        try:
            await rec.until_revision(last_revision)
            assert rec.source.revision == last_revision
            served = rec.source.snapshot
            assert served is not None
            expected = await store_versions(client)
            got = {key(r.type_url, r.name): r.version for by in served.resources.values() for r in by.values()}
            assert got == expected  # every write and delete arrived, none twice, none lost between load and watch
            assert rec.errors == [] and rec.source.reloads == 1
        finally:
            await rec.stop()


async def test_apply_transaction_is_seen_atomically_by_every_replica(
    client: EtcdClient, etcd: Etcd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"svc{i}" for i in range(6)]

    def write_config(port: int) -> Path:
        cfg = tmp_path / "cfg.json"
        items = ",".join(cla_value(n, port).decode() for n in names)
        cfg.write_text('{"resources": [' + items + "]}")
        return cfg

    url = f"etcd://127.0.0.1:{etcd.client_port}{PREFIX.rstrip('/')}"
    assert await asyncio.to_thread(main, ["apply", "-f", str(write_config(1)), "--store", url]) == 0
    assert "6 created" in capsys.readouterr().out
    replicas = [Recorder(EtcdSource(EtcdClient([f"127.0.0.1:{etcd.client_port}"]), PREFIX)) for _ in range(3)]
    for r in replicas:
        await r.start()
    try:
        for port in (2, 3, 4):
            assert await asyncio.to_thread(main, ["apply", "-f", str(write_config(port)), "--store", url]) == 0
            out = capsys.readouterr().out
            assert "6 updated" in out and "applied at revision" in out, out
        revision = (await client.range_prefix(PREFIX)).header.revision
        for r in replicas:
            await r.until_revision(revision)
            seen = [set(ports(s).values()) for s in r.snapshots]
            # Every snapshot a replica ever built has all six endpoints on one port: never half a transaction.
            assert all(len(p) == 1 for p in seen), seen
            assert [p.pop() for p in seen] == [1, 2, 3, 4]
        assert len({r.snapshots[-1].version for r in replicas}) == 1  # identical versions on every replica
    finally:
        for r in replicas:
            await r.stop()
            await r.source.client.close()


async def test_compacted_history_triggers_a_full_reload(client: EtcdClient, etcd: Etcd) -> None:
    await client.put(key(ENDPOINT, "a"), cla_value("a", 1))
    await client.put(key(ENDPOINT, "b"), cla_value("b", 1))
    async with EtcdClient([f"127.0.0.1:{etcd.client_port}"]) as reader:
        rec = Recorder(EtcdSource(reader, PREFIX))
        rec.snapshots.append(await rec.source.initial())
        # While this replica is not watching, the store moves on and compacts the history it would resume from.
        await client.delete(key(ENDPOINT, "a"))
        await client.put(key(ENDPOINT, "b"), cla_value("b", 2))
        last = await client.put(key(ENDPOINT, "c"), cla_value("c", 3))
        await client.compact(last.header.revision)
        rec.run()
        try:
            await rec.until_revision(last.header.revision)
            assert rec.source.reloads == 2
            assert rec.source.snapshot is not None and ports(rec.source.snapshot) == {"b": 2, "c": 3}
            # And it keeps watching after the reload.
            more = await client.put(key(ENDPOINT, "d"), cla_value("d", 4))
            await rec.until_revision(more.header.revision)
            assert ports(rec.source.snapshot) == {"b": 2, "c": 3, "d": 4}
        finally:
            await rec.stop()


async def test_invalid_key_is_rejected_and_the_last_good_value_kept(client: EtcdClient, etcd: Etcd) -> None:
    await client.put(key(CLUSTER, "web"), cluster_value("web"))
    await client.put(key(ENDPOINT, "web"), cla_value("web", 1))
    async with EtcdClient([f"127.0.0.1:{etcd.client_port}"]) as reader:
        rec = Recorder(EtcdSource(reader, PREFIX))
        await rec.start()
        try:
            good = rec.source.snapshot
            assert good is not None and ports(good) == {"web": 1}
            bad = await client.put(key(ENDPOINT, "web"), b'{"@type": "' + ENDPOINT.encode() + b'", "cluster_name": 7,')
            wrong = await client.put(key(ENDPOINT, "other"), cla_value("not-other", 5))  # name differs from the key
            await rec.until_revision(wrong.header.revision)
            assert bad.header.revision < wrong.header.revision
            assert [e.file for e in rec.errors] == [key(ENDPOINT, "web"), key(ENDPOINT, "other")]
            assert "YAML syntax error" in str(rec.errors[0]) or "JSON" in str(rec.errors[0])
            assert "but the key names" in str(rec.errors[1])
            assert rec.source.snapshot is good  # nothing valid changed: the last good config is still served
            fixed = await client.put(key(ENDPOINT, "extra"), cla_value("extra", 9))
            await rec.until_revision(fixed.header.revision)
            # Other keys still apply; the invalid one keeps its last good value.
            assert ports(rec.source.snapshot) == {"web": 1, "extra": 9}
            assert set(rec.source.errors) == {key(ENDPOINT, "web"), key(ENDPOINT, "other")}
        finally:
            await rec.stop()


async def test_apply_prune_dry_run_and_get(
    client: EtcdClient, etcd: Etcd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"etcd://127.0.0.1:{etcd.client_port}{PREFIX.rstrip('/')}"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "a.yaml").write_text(
        "resources:\n"
        f"- {cluster_value('web', eds=False, port=8080).decode()}\n"
        f"- {cla_value('web', 8080).decode()}\n"
        "groups:\n  edge:\n    resources:\n"
        f"    - {cla_value('edge-only', 9090).decode()}\n"
    )
    await client.put(key(ENDPOINT, "stray"), cla_value("stray", 1))

    async def cli(*args: str) -> str:
        assert await asyncio.to_thread(main, list(args)) == 0
        return capsys.readouterr().out

    out = await cli("apply", "-f", str(cfg), "--store", url, "--dry-run")
    assert "would have created " + key(CLUSTER, "web") in out and "3 created" in out
    assert (await client.range_prefix(PREFIX)).count == 0 or len((await client.range_prefix(PREFIX)).kvs) == 1
    out = await cli("apply", "-f", str(cfg), "--store", url)
    assert "created " + PREFIX + "groups/edge/envoy.config.endpoint.v3.ClusterLoadAssignment/edge-only" in out
    assert "3 created, 0 updated, 0 deleted" in out
    out = await cli("apply", "-f", str(cfg), "--store", url)
    assert "nothing to change" in out and "3 unchanged" in out
    out = await cli("apply", "-f", str(cfg), "--store", url, "--prune")
    assert f"deleted {key(ENDPOINT, 'stray')}" in out and "1 deleted" in out
    out = await cli("get", "--store", url)
    assert key(CLUSTER, "web") in out and "# 3 keys at revision" in out
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(await cli("get", "--store", url, "-o", "yaml"))
    out = await cli("apply", "-f", str(dumped), "--store", url, "--prune")  # what `get` prints, `apply` takes back
    assert "nothing to change" in out and "3 unchanged" in out


async def test_apply_rejects_invalid_config_and_writes_nothing(
    client: EtcdClient, etcd: Etcd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"resources:\n- {cla_value('ok', 1).decode()}\n- {{'@type': {CLUSTER!r}, name: x, bogus: 1}}\n")
    url = f"etcd://127.0.0.1:{etcd.client_port}{PREFIX.rstrip('/')}"
    assert await asyncio.to_thread(main, ["apply", "-f", str(cfg), "--store", url]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:3:" in err and "bogus" in err
    assert len((await client.range_prefix(PREFIX)).kvs) == 0


async def test_client_moves_past_a_dead_endpoint(etcd: Etcd) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        endpoints = [f"127.0.0.1:{dead.getsockname()[1]}", f"127.0.0.1:{etcd.client_port}"]
        async with EtcdClient(endpoints, timeout=5) as client:
            put = await client.put(key(ENDPOINT, "a"), cla_value("a", 1))
            assert client.endpoint == endpoints[1]
            rec = Recorder(EtcdSource(client, PREFIX))
            await rec.start()
            try:
                assert rec.source.revision == put.header.revision
            finally:
                await rec.stop()
    finally:
        dead.close()
