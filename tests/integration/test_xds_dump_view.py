"""`microxds dump` readable output (issue 16 §8): Istio IPs as text, `--summary` as a table, `--type workload`
and `--type service` as Address subsets, and `--watch` printing only what each response changed."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from microxds.cli import build_parser
from microxds.commands.dump import dump
from microxds.server.app import ControlPlane, ServeOptions

pytestmark = pytest.mark.timeout(60)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    config = tmp_path / "mesh.yaml"
    config.write_text((EXAMPLES / "ambient.yaml").read_text())
    cp = ControlPlane(ServeOptions(config=config, listen="127.0.0.1:0", quiet=0.02, max_delay=0.2, poll_interval=0.05))
    await cp.start()
    try:
        host, port = cp.addresses["plaintext"]
        yield f"{host}:{port}", config
    finally:
        await cp.stop(0.5)


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["dump", *argv])


async def run(*argv: str) -> str:
    out = io.StringIO()
    assert await dump(args(*argv), out) == 0
    return out.getvalue()


async def test_ips_decoded_and_raw_on_request(plane: tuple[str, Path]) -> None:
    server, _ = plane
    text = await run("--server", server, "--type", "address", "--delta")
    assert "- 127.0.0.2" in text and "address: 10.96.0.10" in text, text
    assert "fwAAAg==" not in text  # 127.0.0.2 as protobuf JSON bytes
    raw = await run("--server", server, "--type", "address", "--delta", "--raw")
    assert "fwAAAg==" in raw and "127.0.0.2" not in raw


async def test_summary_table_and_address_subsets(plane: tuple[str, Path]) -> None:
    server, _ = plane
    text = await run("--server", server, "--type", "workload", "--summary")
    lines = text.splitlines()
    assert lines[1].split() == ["TYPE", "NAME", "VERSION", "DETAIL"], text
    rows = {line.split()[1]: line for line in lines[2:]}
    assert "workload 127.0.0.2 spiffe://cluster.local/ns/default/sa/alice" in rows["Kubernetes//Pod/default/alice"]
    assert all(" service " not in r for r in rows.values())  # --type workload: no services
    services = await run("--server", server, "--type", "service", "--summary")
    assert "service echo.default.svc.cluster.local 10.96.0.10" in services, services
    assert "workload" not in services.split("\n", 2)[2]


class _Signalling(io.StringIO):
    """An output that says when the dump flushed its first response."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = asyncio.Event()

    def flush(self) -> None:
        super().flush()
        if self.getvalue():
            self.flushed.set()


async def test_watch_prints_what_changed(plane: tuple[str, Path]) -> None:
    server, config = plane
    out = _Signalling()
    task = asyncio.ensure_future(
        dump(args("--server", server, "--type", "address", "--delta", "--watch", "--count", "2", "--summary"), out)
    )
    try:
        async with asyncio.timeout(20):
            await out.flushed.wait()  # the first response is printed
        text = config.read_text().replace('addresses: ["127.0.0.3"]', 'addresses: ["127.0.0.9"]')
        config.write_text(text)
        async with asyncio.timeout(20):
            assert await task == 0
    finally:
        task.cancel()
    second = out.getvalue().split("# Address: +", 1)[1]
    assert second.startswith("0 ~1 -0"), out.getvalue()
    assert "# changed: Kubernetes//Pod/default/bob" in second
    assert "127.0.0.9" in second and "alice" not in second  # only the changed workload is shown again
