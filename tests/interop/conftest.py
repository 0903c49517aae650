"""Fixtures for tests that run real third-party peers. Helpers themselves live in ``tests.peers``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.peers import LOOPBACK, TestPKI, close_server, make_test_pki, start_echo_server

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything in tests/interop needs real peers: mark it, so `-m "not interop"` deselects it all
    # even where a test author forgot the marker.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    """A fresh CA with identities ``client`` and ``server`` in namespace ``default``."""
    return make_test_pki(tmp_path / "pki", ["client", "server"])


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """Port of a TCP echo server on 127.0.0.1, closed after the test."""
    server, port = await start_echo_server()
    try:
        yield port
    finally:
        await close_server(server)


@pytest.fixture
def backends() -> Iterator[dict[str, int]]:
    """Two grpcio servers answering `/interop.Echo/Call` with their own tag (proxyless xDS tests)."""
    servers, ports = [], {}
    for tag in ("A", "B"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

        def call(request: bytes, context: Any, tag: str = tag) -> bytes:
            return tag.encode()

        handler = grpc.unary_unary_rpc_method_handler(call)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("interop.Echo", {"Call": handler})])
        ports[tag] = server.add_insecure_port(f"{LOOPBACK}:0")
        server.start()
        servers.append(server)
    try:
        yield ports
    finally:
        for server in servers:
            server.stop(0)
