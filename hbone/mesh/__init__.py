"""The in-process mesh: an application's own identity, HBONE tunnels and listeners without a sidecar.

`hbone.Mesh` is the entry point (see its docstring). The names below are loaded on first use, so importing
`hbone` or `hbone.mesh` stays cheap and the optional extras (httpx, hypercorn) are imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hbone.mesh.asgi import AsgiHandler
    from hbone.mesh.core import ControlPlane, Mesh
    from hbone.mesh.serving import MeshServer, TunnelHandler
    from hbone.mesh.streams import TunnelPeer, TunnelReader, TunnelStream, TunnelWriter
    from hbone.mesh.transport import MeshConnectError, MeshTransport

_EXPORTS = {
    "AsgiHandler": "hbone.mesh.asgi",
    "ControlPlane": "hbone.mesh.core",
    "Mesh": "hbone.mesh.core",
    "MeshConnectError": "hbone.mesh.transport",
    "MeshServer": "hbone.mesh.serving",
    "MeshTransport": "hbone.mesh.transport",
    "TunnelHandler": "hbone.mesh.serving",
    "TunnelPeer": "hbone.mesh.streams",
    "TunnelReader": "hbone.mesh.streams",
    "TunnelStream": "hbone.mesh.streams",
    "TunnelWriter": "hbone.mesh.streams",
}

__all__ = [
    "AsgiHandler",
    "ControlPlane",
    "Mesh",
    "MeshConnectError",
    "MeshServer",
    "MeshTransport",
    "TunnelHandler",
    "TunnelPeer",
    "TunnelReader",
    "TunnelStream",
    "TunnelWriter",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
