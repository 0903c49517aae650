"""Writing config to the etcd store (`microxds apply`) and reading it back (`microxds get`).

`plan()` is pure: given what the store holds (key -> value, mod revision) and the validated config, it lists the
keys to create, update and (with prune) delete, comparing resource versions, not bytes, so a value written by hand
in YAML that means the same as our canonical JSON is left alone. `apply()` writes the plan as ONE etcd transaction
guarded by every touched key's `mod_revision` (absent keys: `version == 0`): either all of it lands at one
revision, or nothing does because another writer got there first, and then the plan is made again (3 tries).
Replicas watching the prefix see the whole transaction as one watch response, so they never serve half of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from microxds._pb.etcd.etcdserverpb import rpc_pb2
from microxds.errors import ConfigError, StoreError
from microxds.etcd.client import EtcdClient
from microxds.resources import Resource
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.storekeys import desired_keys, parse_entry, render

ATTEMPTS = 3
# etcd's default --max-txn-ops; a larger apply fails with etcd's own "too many operations" error.
ETCD_MAX_TXN_OPS = 128


@dataclass(frozen=True, slots=True)
class Stored:
    value: bytes
    mod_revision: int


@dataclass
class Plan:
    created: dict[str, Resource] = field(default_factory=dict)
    updated: dict[str, Resource] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    invalid_replaced: list[str] = field(default_factory=list)  # stored values that did not validate

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def lines(self) -> list[str]:
        out = [f"created {k}" for k in sorted(self.created)]
        out += [f"updated {k}" + (" (was invalid)" if k in self.invalid_replaced else "") for k in sorted(self.updated)]
        out += [f"deleted {k}" for k in sorted(self.deleted)]
        return out


def plan(prefix: str, stored: Mapping[str, Stored], snap: ConfigSnapshot, *, prune: bool) -> Plan:
    p = Plan()
    for key, res in sorted(desired_keys(prefix, snap).items()):
        have = stored.get(key)
        if have is None:
            p.created[key] = res
            continue
        try:
            current = parse_entry(prefix, key, have.value).resource.version
        except ConfigError:
            current = None
            p.invalid_replaced.append(key)
        if current == res.version:
            p.unchanged += 1
        else:
            p.updated[key] = res
    if prune:
        wanted = desired_keys(prefix, snap)
        p.deleted = sorted(k for k in stored if k not in wanted)
    return p


def transaction(p: Plan, stored: Mapping[str, Stored]) -> rpc_pb2.TxnRequest:
    """The plan as one guarded transaction."""
    txn = rpc_pb2.TxnRequest()
    for key in p.created:
        txn.compare.add(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.VERSION, key=key.encode(), version=0)
    for key in [*p.updated, *p.deleted]:
        txn.compare.add(
            result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key.encode(),
            mod_revision=stored[key].mod_revision,
        )  # fmt: skip
    for key, res in [*p.created.items(), *p.updated.items()]:
        txn.success.add(request_put=rpc_pb2.PutRequest(key=key.encode(), value=render(res)))
    for key in p.deleted:
        txn.success.add(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key.encode()))
    return txn


async def read(client: EtcdClient, prefix: str) -> tuple[int, dict[str, Stored]]:
    """(revision, key -> stored value) of everything under `prefix`."""
    resp = await client.range_prefix(prefix)
    return resp.header.revision, {
        kv.key.decode("utf-8", "replace"): Stored(bytes(kv.value), kv.mod_revision) for kv in resp.kvs
    }


@dataclass
class ApplyResult:
    plan: Plan
    revision: int  # the revision the transaction created (or the one read, when nothing changed / dry run)
    written: bool


async def apply(
    client: EtcdClient, prefix: str, snap: ConfigSnapshot, *, prune: bool = False, dry_run: bool = False
) -> ApplyResult:
    for _ in range(ATTEMPTS):
        revision, stored = await read(client, prefix)
        p = plan(prefix, stored, snap, prune=prune)
        if dry_run or not p:
            return ApplyResult(p, revision, False)
        txn = transaction(p, stored)
        ops = len(txn.success)
        if ops > ETCD_MAX_TXN_OPS:
            # etcd would refuse it anyway; say why in our words (the limit is etcd's --max-txn-ops).
            raise StoreError(
                f"{ops} changes do not fit in one etcd transaction (etcd's default --max-txn-ops is "
                f"{ETCD_MAX_TXN_OPS}); raise --max-txn-ops on the etcd members or apply in smaller steps"
            )
        resp = await client.txn(txn)
        if resp.succeeded:
            return ApplyResult(p, resp.header.revision, True)
    raise StoreError(f"the store under {prefix} kept changing while we wrote it ({ATTEMPTS} tries); nothing written")
