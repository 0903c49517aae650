"""Transport-free xDS caches: per-group snapshots, linear (per-resource) caches and a type router."""

from microxds.cache.consistency import Problem
from microxds.cache.linear import LinearCache
from microxds.cache.mux import MuxCache
from microxds.cache.snapshot import Snapshot, SnapshotCache
from microxds.cache.types import (
    Cache,
    CacheWatch,
    ChangeCallback,
    Changes,
    MetadataHash,
    NodeHash,
    node_cluster_hash,
    node_id_hash,
)

__all__ = [
    "Cache",
    "CacheWatch",
    "ChangeCallback",
    "Changes",
    "LinearCache",
    "MetadataHash",
    "MuxCache",
    "NodeHash",
    "Problem",
    "Snapshot",
    "SnapshotCache",
    "node_cluster_hash",
    "node_id_hash",
]
