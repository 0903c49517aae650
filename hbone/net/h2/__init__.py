"""The sans-IO HTTP/2 engines: the only code in hbone that imports h2, hyperframe or hpack (see `api`).

`new_engine` makes the engine a connection uses; the driver (`hbone.net.connection`) sees only `api.Engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hbone.net.h2.api import Engine
    from hbone.net.settings import H2Settings


def new_engine(*, client: bool, settings: H2Settings) -> Engine:
    """The HTTP/2 engine for one connection (h2 with our tuned fast paths, `hbone.net.h2.engine`)."""
    from hbone.net.h2.engine import H2Engine  # imported when first needed: nothing heavy at package import

    return H2Engine(client=client, settings=settings)
