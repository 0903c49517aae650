"""The connection driver's parts talk through methods, never through each other's private fields.

issue 19: streams used to call `_conn._pump`/`_ack_id`/`_reset_stream` and the sending mixin wrote `stream._send`;
now `H2Connection` composes an engine, a `SendScheduler`, a `StreamRouter` and a `Lifecycle`, and streams reach
their owner through `StreamOwner`. This test reads the source of hbone/net (outside the engines in hbone/net/h2/,
whose job is to hold h2's internals) and fails on any `obj._private` where `obj` is not `self`/`cls` or a class of
the same module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hbone.net.connection import H2Connection
from hbone.net.events import RouterHost
from hbone.net.lifecycle import LifecycleHost
from hbone.net.scheduler import SchedulerHost
from hbone.net.stream import StreamOwner

NET = Path(__file__).resolve().parents[2] / "hbone" / "net"


def _private_reaches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    own_classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and (owner.id in ("self", "cls") or owner.id in own_classes):
            continue
        found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", sorted(NET.glob("*.py")), ids=lambda p: p.name)
def test_no_part_reaches_into_another_objects_privates(path: Path) -> None:
    assert _private_reaches(path) == []


def test_the_scan_sees_a_private_reach(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f(stream):\n    stream._send.clear()\n    return self._x\n")
    assert _private_reaches(sample) == ["sample.py:2: stream._send"]


@pytest.mark.parametrize("port", [StreamOwner, SchedulerHost, LifecycleHost, RouterHost])
async def test_the_connection_serves_every_port(port: type) -> None:
    """Every method and property of each port is a public member of H2Connection (the parts' only way back)."""
    conn = H2Connection(client=True)
    names = [n for n in vars(port) if not n.startswith("_")]
    assert names
    assert [n for n in names if not hasattr(conn, n)] == []
