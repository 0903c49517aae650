"""Bounded gRPC memory: partial and unread messages are held against a per-connection budget inside a process-wide
one; past it only the offending call fails (RESOURCE_EXHAUSTED), and everything held is returned."""

from __future__ import annotations

import gzip

import pytest

from hbone.errors import GrpcStatus, LimitExceeded
from hbone.grpc.framing import MessageDecoder, encode_message
from hbone.limits import ByteBudget, trip_counts

MiB = 1024 * 1024


def test_partial_messages_are_capped_per_connection_and_process() -> None:
    process = ByteBudget("grpc_buffered_bytes", 10 * MiB)
    conn = ByteBudget("grpc_buffered_bytes", 4 * MiB, process)
    prefix = b"\x00" + (3 * MiB).to_bytes(4, "big")  # a 3 MiB message, sent minus its last bytes
    first = MessageDecoder(4 * MiB, budget=conn)
    assert first.feed(prefix + b"x" * (3 * MiB - 1)) == []
    assert conn.used == process.used == 5 + 3 * MiB - 1  # prefix + partial body
    before = trip_counts()["grpc_buffered_bytes"]
    second = MessageDecoder(4 * MiB, budget=conn)
    second.feed(prefix + b"x" * (MiB // 2))  # half a MiB more: still fits
    with pytest.raises(LimitExceeded) as err:
        second.feed(b"x" * MiB)  # over the connection's 4 MiB
    assert err.value.grpc_status is GrpcStatus.RESOURCE_EXHAUSTED
    assert trip_counts()["grpc_buffered_bytes"] == before + 1
    assert conn.used == 5 + 3 * MiB - 1  # the failed call gave its bytes back; the first one is untouched
    assert first.feed(b"x") == [b"x" * (3 * MiB)]
    first.consumed(3 * MiB)
    assert conn.used == process.used == 0


def test_gzip_bombs_in_one_read_are_capped() -> None:
    conn = ByteBudget("grpc_buffered_bytes", 8 * MiB)
    bomb = encode_message(b"\x00" * (3 * MiB), compress=True, encoding="gzip")
    assert len(bomb) < 10_000
    dec = MessageDecoder(4 * MiB, "gzip", budget=conn)
    with pytest.raises(LimitExceeded):
        dec.feed(bomb * 5)  # 15 MiB once inflated, from a few KiB
    assert conn.used == 0


def test_release_and_drop_return_everything() -> None:
    conn = ByteBudget("grpc_buffered_bytes", 8 * MiB)
    dec = MessageDecoder(4 * MiB, budget=conn)
    dec.feed(b"\x00" + MiB.to_bytes(4, "big") + b"y" * 1000)
    dec.release()
    assert conn.used == 0
    dropped = MessageDecoder(4 * MiB, budget=conn)
    dropped.feed(encode_message(b"z" * 100) + b"\x00\x00\x01")
    assert conn.used > 0
    del dropped
    assert conn.used == 0


def test_without_a_budget_nothing_changes() -> None:
    dec = MessageDecoder(4 * MiB, "gzip")
    assert dec.feed(encode_message(gzip.compress(b"")[:0] + b"hello")) == [b"hello"]
