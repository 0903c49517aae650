"""The sans-IO HTTP/2 engines: the only code in hbone that imports h2, hyperframe or hpack (see `api`).

`new_engine` makes the engine a connection uses; the driver (`hbone.net.connection`) sees only `api.Engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hbone.net.h2.api import Engine
    from hbone.net.settings import H2Settings


def new_engine(*, client: bool, settings: H2Settings) -> Engine:
    """The HTTP/2 engine for one connection, as `settings.engine` says: "h2" (h2 with our tuned fast paths,
    `hbone.net.h2.engine`; "h2-stock": without its DATA and credit fast paths) or "native" (our own frame layer,
    `hbone.net.h2.native_conn`)."""
    # Imported when first needed: nothing heavy at package import.
    if settings.engine == "native":
        from hbone.net.h2.native_conn import NativeEngine

        return NativeEngine(client=client, settings=settings)
    from hbone.net.h2.engine import H2Engine

    return H2Engine(client=client, settings=settings)
