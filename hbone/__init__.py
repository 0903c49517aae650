"""HBONE: TCP streams carried as HTTP/2 CONNECT over mutual TLS with SPIFFE identities.

The library API (`Mesh`, `MeshServer`, `TunnelReader`, `TunnelWriter`, `TunnelStream`, `TunnelPeer`, `ControlPlane`,
`MeshTransport`, `MeshConnectError`, `AsgiHandler`, `SpiffeId`) is loaded on first use: `import hbone` does nothing
heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hbone.identity.spiffe import SpiffeId
    from hbone.mesh import (
        AsgiHandler,
        ControlPlane,
        Mesh,
        MeshConnectError,
        MeshServer,
        MeshTransport,
        TunnelHandler,
        TunnelPeer,
        TunnelReader,
        TunnelStream,
        TunnelWriter,
    )

__version__ = "0.1.0"

_MESH = (
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
)
__all__ = [
    "AsgiHandler",
    "ControlPlane",
    "Mesh",
    "MeshConnectError",
    "MeshServer",
    "MeshTransport",
    "SpiffeId",
    "TunnelHandler",
    "TunnelPeer",
    "TunnelReader",
    "TunnelStream",
    "TunnelWriter",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _MESH:
        return getattr(importlib.import_module("hbone.mesh"), name)
    if name == "SpiffeId":
        return importlib.import_module("hbone.identity.spiffe").SpiffeId
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
