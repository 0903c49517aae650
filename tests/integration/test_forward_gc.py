"""`hbone forward` frees a finished connection by reference counting: no cycle left for the garbage collector.

Every accepted connection's pipe, stream, transport and access record once formed a reference cycle (the pipe
held its opener, the opener's closure held the pipe), so each tunnel left ~28 objects for the cycle collector
(RESULTS-hbone.md, round 5). This runs the real forward command in process over h2c and checks, with the
collector switched off, that a finished connection's pipe never ends up as cyclic garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from hbone.cli import build_parser
from hbone.commands import tunnel
from hbone.net.relay import AcceptedPipe
from hbone.proxy import accesslog
from hbone.proxy.accesslog import AccessRecord
from hbone.proxy.inbound import InboundConfig, InboundHandler
from hbone.proxy.listener import start_admitting_listener
from hbone.server import HboneServer
from hbone.testing import start_echo_server

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Closed:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []
        self.event = asyncio.Event()

    def opened(self, record: AccessRecord) -> None:
        pass

    def closed(self, record: AccessRecord) -> None:
        if record.direction == "forward":
            self.records.append(record)
            self.event.set()


async def test_finished_forward_connection_is_not_cyclic_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    echo, echo_port = await start_echo_server()
    server = HboneServer(None, InboundHandler(InboundConfig(own_ports=frozenset())))
    _, via_port = await server.listen("127.0.0.1", 0, plaintext=True)
    listening: asyncio.Future[asyncio.Server] = asyncio.get_running_loop().create_future()

    async def capture(*args: Any, **kwargs: Any) -> asyncio.Server:
        listener = await start_admitting_listener(*args, **kwargs)
        listening.set_result(listener)
        return listener

    monkeypatch.setattr(tunnel, "start_admitting_listener", capture)
    args = build_parser().parse_args(
        ["forward", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_port}", "--via", f"127.0.0.1:{via_port}",
         "--plaintext", "--admin", "off", "--metrics", "off", "--readiness", "off"]
    )  # fmt: skip
    sink = _Closed()
    remove = accesslog.add_sink(sink)
    forward = asyncio.create_task(tunnel._forward(args))
    try:
        listener = await asyncio.wait_for(asyncio.shield(listening), 20)
        port = listener.sockets[0].getsockname()[1]
        with collector_off():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 20) == b"ping"
            writer.close()
            await asyncio.wait_for(sink.event.wait(), 20)
            for _ in range(20):  # let the loop run the callbacks that still hold the connection
                await asyncio.sleep(0)
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                cyclic = [o for o in gc.garbage if isinstance(o, AcceptedPipe)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        assert sink.records and sink.records[0].result == "ok"
        assert cyclic == [], "a finished forward connection was left for the cycle collector"
    finally:
        remove()
        forward.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forward
        await server.close()
        echo.close()
