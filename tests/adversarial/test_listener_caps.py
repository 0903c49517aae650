"""The per-listener connection cap of `hbone forward` and of REDIRECT capture (real processes): a client opening far
more connections than `--max-connections` gets exactly the cap admitted and every other connection closed at
accept; the admitted ones keep relaying, the process's fds follow the cap rather than the attack, and once the
attacker lets go a new connection is served again.

REDIRECT capture runs in a network namespace this test creates (iptables there sends the client's connections to
the capture listener); the fixed port 15001 is inside that private namespace, so it cannot collide."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.proxy.capture_rules import RuleOptions, iptables_rules
from hbone.proxy.redirect import DEFAULT_MARK
from tests.adversarial.harness import HBONE, SERVE_READY, Target, check_bounds, process
from tests.integration.test_proxy_capture import make_netns, must
from tests.peers import NO_ADMIN

pytestmark = pytest.mark.timeout(120)

CAP = 40
ATTACK = 600
#: asyncio accepts up to a backlog's worth of sockets before their protocols run, so a burst of refused
#: connections is briefly visible as fds: the peak may exceed the cap by about one accept batch, never by the attack.
ACCEPT_BURST = 150


class CountingEcho:
    """An echo server that counts the connections it accepted (what the listener under test let through)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self._echo, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.changed.set()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def wait_accepted(self, count: int) -> None:
        async with asyncio.timeout(30):
            while self.accepted < count:
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def round_trip(port: int, payload: bytes = b"ping") -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 20) == payload
    finally:
        writer.close()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def flood(port: int) -> tuple[list[Conn], list[Conn]]:
    """Open ATTACK connections and hold them; return (still open, closed by the server) once ATTACK - CAP were
    closed (EOF or reset; bounded wait)."""
    conns = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10) for _ in range(ATTACK)]
    reads = {asyncio.ensure_future(conn[0].read(1)): conn for conn in conns}
    pending: set[asyncio.Future[bytes]] = set(reads)
    try:
        async with asyncio.timeout(40):
            while len(reads) - len(pending) < ATTACK - CAP:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        closed = len(reads) - len(pending)
        raise AssertionError(f"{closed} of {ATTACK} connections closed, not the {ATTACK - CAP} over the cap") from None
    for fut in pending:
        fut.cancel()
    await asyncio.gather(*reads, return_exceptions=True)  # resets are one way of being closed at accept
    return [reads[f] for f in pending], [c for f, c in reads.items() if f not in pending]


@contextlib.asynccontextmanager
async def forward_chain(tmp_path: Path, echo_port: int) -> AsyncIterator[Target]:
    """`hbone serve` (h2c, allow-all) and `hbone forward --max-connections CAP` to the echo server through it."""
    config = tmp_path / "serve.yaml"
    config.write_text("listen: null\nh2c_listen: 127.0.0.1:0\nauthorization: {mode: allow-all}\n")
    async with process([*HBONE, "serve", "--config", str(config)], SERVE_READY, 1) as serve:
        h2c = serve.ports[0]
        argv = [
            *HBONE, "forward", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{echo_port}",
            "--via", f"127.0.0.1:{h2c}", "--plaintext", "--max-connections", str(CAP),
        ]  # fmt: skip
        async with process(argv, r"listening 127\.0\.0\.1:(\d+)", 1) as fwd:
            yield fwd


async def test_forward_listener_cap(tmp_path: Path) -> None:
    echo = CountingEcho()
    echo_port = await echo.start()
    try:
        async with forward_chain(tmp_path, echo_port) as fwd:
            port = fwd.ports[0]
            await round_trip(port)  # warm up: the baseline includes the pooled HBONE connection
            base_rss, base_fds, before = fwd.rss(), fwd.fds(), echo.accepted
            async with fwd.watched():
                held, refused = await flood(port)
                assert len(held) == CAP and len(refused) == ATTACK - CAP
                await echo.wait_accepted(before + CAP)
                reader, writer = held[0]  # an admitted connection still relays both ways
                writer.write(b"still here")
                assert await asyncio.wait_for(reader.readexactly(10), 20) == b"still here"
                for _, w in [*refused, *held]:
                    w.transport.abort()
                assert await fwd.settled_fds(base_fds) <= base_fds + 12
            await round_trip(port)  # served again once the attacker let go
            assert echo.accepted == before + CAP + 1, "connections over the cap reached the upstream"
            check_bounds(fwd, base_rss, base_fds, f"forward: {ATTACK} connections, cap {CAP}")
            assert fwd.peak_fds <= base_fds + CAP + ACCEPT_BURST, f"peak fds {fwd.peak_fds} (base {base_fds})"
            assert "max_connections" in "".join(fwd.stderr), "the trip was not logged"
    finally:
        echo.close()


CLIENT = """
import json, socket, sys, time, select
host, port, attack, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conns = [socket.create_connection((host, port), timeout=10) for _ in range(attack)]
open_ = set(conns)
deadline = time.monotonic() + 40
while len(conns) - len(open_) < attack - cap and time.monotonic() < deadline:
    ready, _, _ = select.select(list(open_), [], [], 1.0)
    for s in ready:
        try:
            if s.recv(1) == b"":
                open_.discard(s)
        except OSError:
            open_.discard(s)
alive = next(iter(open_))
alive.sendall(b"still here")
echoed = alive.recv(64)
print(json.dumps({"open": len(open_), "closed": attack - len(open_), "echoed": echoed.decode()}), flush=True)
sys.stdin.readline()  # hold everything until the test has measured
for s in conns:
    s.close()
print(json.dumps({"released": len(conns)}), flush=True)
sys.stdin.readline()  # the test waits for the listener to let go of the admitted ones before a new one
with socket.create_connection((host, port), timeout=10) as s:
    s.sendall(b"after")
    print(json.dumps({"after": s.recv(64).decode()}), flush=True)
"""


async def test_redirect_capture_listener_cap(tmp_path: Path) -> None:
    netns = make_netns()
    ns, v4h, _ = next(netns)
    echo = CountingEcho()
    try:
        echo_port = await echo.start(v4h)
        for rule in iptables_rules(RuleOptions(include_cidrs=(f"{v4h}/32",), ipv6=False)):
            must("ip", "netns", "exec", ns, *rule.split())
        config = tmp_path / "capture.yaml"
        config.write_text(f"mark: {DEFAULT_MARK}\n")  # our direct dials carry the mark the rules skip (no loop)
        argv = [
            "ip", "netns", "exec", ns, *HBONE, "capture", "redirect", "--listen", "127.0.0.1:15001", "--direct",
            "--config", str(config), "--max-connections", str(CAP), *NO_ADMIN,
        ]  # fmt: skip
        async with process(argv, r"redirect listening 127\.0\.0\.1:(\d+)", 1) as capture:
            base_rss, base_fds = capture.rss(), capture.fds()
            client = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, v4h, str(echo_port), str(ATTACK), str(CAP),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert client.stdin is not None and client.stdout is not None and client.stderr is not None
            try:
                async with capture.watched():
                    line = await asyncio.wait_for(client.stdout.readline(), 60)
                    assert line, (await client.stderr.read()).decode() + "".join(capture.stderr)
                    seen = json.loads(line)
                    assert seen == {"open": CAP, "closed": ATTACK - CAP, "echoed": "still here"}, seen
                    assert echo.accepted == CAP, "connections over the cap reached the destination"
                    client.stdin.write(b"release\n")
                    released = json.loads(await asyncio.wait_for(client.stdout.readline(), 30))
                    assert released == {"released": ATTACK}, released
                    # The closes reach the listener asynchronously: a new connection before its admitted ones are
                    # gone would meet the cap (the race this wait removes), so wait until its fds are back.
                    assert await capture.settled_fds(base_fds) <= base_fds + 12
                    client.stdin.write(b"after\n")
                    after = json.loads(await asyncio.wait_for(client.stdout.readline(), 30))
                    assert after == {"after": "after"}
                    assert await asyncio.wait_for(client.wait(), 30) == 0
                    assert await capture.settled_fds(base_fds) <= base_fds + 12
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()
            check_bounds(capture, base_rss, base_fds, f"REDIRECT capture: {ATTACK} connections, cap {CAP}")
            assert capture.peak_fds <= base_fds + 2 * CAP + ACCEPT_BURST, capture.peak_fds  # client + upstream each
            assert "max_connections" in "".join(capture.stderr)
    finally:
        echo.close()
        with contextlib.suppress(StopIteration):
            next(netns)  # the generator's cleanup: the veth pair and the namespace go
