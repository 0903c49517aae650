"""`hbone serve`, `probe`, `connect` and `forward` as real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hbone.grpc.client import Channel
from hbone.grpc.codec import ProtoCodec
from hbone.grpc.health import ServingStatus, health_messages
from hbone.identity import IdentityManager, load_bundle
from hbone.testing import TestCA, start_echo_server
from hbone.tls import MeshTls
from tests.peers import NO_ADMIN, stop_process

pytestmark = pytest.mark.timeout(60)
HBONE = [sys.executable, "-m", "hbone.cli"]
DAEMONS = ("serve", "forward")


def _cmd(args: tuple[str, ...]) -> list[str]:
    return [*HBONE, *args, *(NO_ADMIN if args and args[0] in DAEMONS else ())]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("certs")
    ca = TestCA()
    for ns, sa in (("ns", "alice"), ("ns", "bob"), ("other", "mallory")):
        ca.write(base / sa, ns, sa)
    return base


@contextlib.asynccontextmanager
async def process(*args: str, ready: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, re.Match[str]]]:
    """Start a command and wait for the stderr line matching `ready` (it reports the ports it bound)."""
    proc = await asyncio.create_subprocess_exec(
        *_cmd(args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    seen = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            if not line:
                raise AssertionError(f"{args[0]} exited before it was ready: {''.join(seen)}")
            seen.append(line)
            m = re.search(ready, line)
            if m:
                break
        yield proc, m
    finally:
        await stop_process(proc, 10)


async def run(*args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *_cmd(args), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


EXPECT_BOB = ("--expect-identity", "spiffe://cluster.local/ns/ns/sa/bob")
SERVE_READY = r"listening mtls=127\.0\.0\.1:(\d+) h2c=127\.0\.0\.1:(\d+)"


async def test_serve_probe_connect_forward(certs: Path) -> None:
    echo, echo_port = await start_echo_server()
    target = f"127.0.0.1:{echo_port}"
    try:
        async with process(
            "serve",
            "--certs",
            str(certs / "bob"),
            "--listen",
            "127.0.0.1:0",
            "--h2c-listen",
            "127.0.0.1:0",
            ready=SERVE_READY,
        ) as (serve, m):
            port, h2c = m.group(1), m.group(2)
            via = f"127.0.0.1:{port}"
            rc, out, err = await run(
                "probe",
                via,
                "--target",
                target,
                "--certs",
                str(certs / "alice"),
                "--json",
                "--expect-identity",
                "spiffe://cluster.local/ns/ns/sa/bob",
            )
            report = json.loads(out)
            assert rc == 0, err
            assert report["status"] == 200
            assert report["tls_version"] == "TLSv1.3" and report["alpn"] == "h2"
            assert report["peer_identity"] == "spiffe://cluster.local/ns/ns/sa/bob"

            # default authorization is same-namespace: mallory (namespace "other") gets 401
            rc, out, _ = await run(
                "probe", via, "--target", target, "--certs", str(certs / "mallory"), "--json", *EXPECT_BOB
            )
            assert rc == 1 and json.loads(out)["status"] == 401

            # gRPC health on the same listeners: mTLS (caller authenticated) and h2c
            req_cls, resp_cls = health_messages()
            alice_tls = MeshTls(IdentityManager.fixed(load_bundle(certs / "alice")))
            for ch in (
                Channel(via, tls=alice_tls, expected_identities=["spiffe://cluster.local/ns/ns/sa/bob"]),
                Channel(f"127.0.0.1:{h2c}"),
            ):
                async with ch:
                    resp = await ch.unary(
                        "/grpc.health.v1.Health/Check",
                        req_cls(),
                        request_codec=ProtoCodec(req_cls),
                        response_codec=ProtoCodec(resp_cls),
                        timeout=10,
                    )
                    assert resp.status == ServingStatus.SERVING

            rc, out, err = await run(
                "connect", target, "--via", via, "--certs", str(certs / "alice"), *EXPECT_BOB, stdin=b"through stdin\n"
            )
            assert rc == 0, err
            assert out == b"through stdin\n"

            # a plaintext (h2c) client has no identity, so same-namespace authorization refuses it
            rc, out, err = await run("connect", target, "--via", f"127.0.0.1:{h2c}", "--plaintext", stdin=b"x")
            assert rc == 2 and b"status 401" in err, err

            async with process(
                "forward",
                "--listen",
                "127.0.0.1:0",
                "--target",
                target,
                "--via",
                via,
                "--certs",
                str(certs / "alice"),
                *EXPECT_BOB,
                "--post",
                "--inner-tls",
                ready=r"listening 127\.0\.0\.1:(\d+)",
            ) as (_, fm):
                reader, writer = await asyncio.open_connection("127.0.0.1", int(fm.group(1)))
                writer.write(b"forwarded")
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), 10) == b"forwarded"
                writer.close()
            serve.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(serve.wait(), 15) == 0
    finally:
        echo.close()


async def test_serve_config_errors_are_clear(tmp_path: Path, certs: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nauthorisation: {mode: allow-all}\n")
    rc, _, err = await run("serve", "--config", str(cfg), "--certs", str(certs / "bob"))
    assert rc == 2 and f"{cfg}:2: unknown key 'authorisation' (did you mean 'authorization'?)".encode() in err
    cfg.write_text("listen: 127.0.0.1:0\nfoo: bar: baz\n")
    rc, _, err = await run("serve", "--config", str(cfg))
    assert rc == 2 and f"{cfg}:2".encode() in err and b"invalid YAML" in err
    cfg.write_text("authorization:\n  policies:\n    - {name: p, namespace: ns, action: MAYBE}\n")
    rc, _, err = await run("serve", "--config", str(cfg), "--certs", str(certs / "bob"))
    assert rc == 2 and b"policies[0]" in err
    rc, _, err = await run("serve", "--listen", "127.0.0.1:0")
    assert rc == 2 and b"needs --certs" in err


async def test_serve_policies_from_config(tmp_path: Path, certs: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\nh2c_listen: 127.0.0.1:0\n"
        "authorization:\n  mode: policies\n  policies:\n"
        "    - name: only-mallory\n      namespace: ns\n      action: ALLOW\n"
        "      rules: [{from: [{source: {principals: [cluster.local/ns/other/sa/mallory]}}]}]\n"
    )
    echo, echo_port = await start_echo_server()
    try:
        async with process("serve", "--config", str(cfg), "--certs", str(certs / "bob"), ready=SERVE_READY) as (
            _,
            m,
        ):
            via = f"127.0.0.1:{m.group(1)}"
            target = f"127.0.0.1:{echo_port}"
            _, out, _ = await run(
                "probe", via, "--target", target, "--certs", str(certs / "mallory"), "--json", *EXPECT_BOB
            )
            assert json.loads(out)["status"] == 200
            _, out, _ = await run(
                "probe", via, "--target", target, "--certs", str(certs / "alice"), "--json", *EXPECT_BOB
            )
            assert json.loads(out)["status"] == 401
    finally:
        echo.close()


async def test_serve_policies_without_mode_keep_same_namespace(tmp_path: Path, certs: Path) -> None:
    """A DENY policy listed without `mode:` narrows the default; it never lets other namespaces or h2c in."""
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\nh2c_listen: 127.0.0.1:0\n"
        "authorization:\n  policies:\n"
        "    - name: deny-port-1\n      namespace: ns\n      action: DENY\n"
        "      rules: [{to: [{operation: {ports: ['1']}}]}]\n"
    )
    echo, echo_port = await start_echo_server()
    try:
        async with process("serve", "--config", str(cfg), "--certs", str(certs / "bob"), ready=SERVE_READY) as (
            _,
            m,
        ):
            via, h2c, target = f"127.0.0.1:{m.group(1)}", f"127.0.0.1:{m.group(2)}", f"127.0.0.1:{echo_port}"
            assert "authz=same-namespace policies=hbone-same-namespace,deny-port-1" in m.string
            _, out, _ = await run(
                "probe", via, "--target", target, "--certs", str(certs / "alice"), "--json", *EXPECT_BOB
            )
            assert json.loads(out)["status"] == 200
            _, out, _ = await run(
                "probe", via, "--target", target, "--certs", str(certs / "mallory"), "--json", *EXPECT_BOB
            )
            assert json.loads(out)["status"] == 401
            _, out, _ = await run("probe", h2c, "--target", target, "--plaintext", "--json")
            assert json.loads(out)["status"] == 401
    finally:
        echo.close()


async def test_h2c_post_with_allow_all(certs: Path) -> None:
    echo, echo_port = await start_echo_server()
    try:
        async with process(
            "serve",
            "--listen",
            "none",
            "--h2c-listen",
            "127.0.0.1:0",
            "--authz",
            "allow-all",
            ready=r"listening h2c=127\.0\.0\.1:(\d+)",
        ) as (_, m):
            rc, out, err = await run(
                "connect",
                f"127.0.0.1:{echo_port}",
                "--via",
                f"127.0.0.1:{m.group(1)}",
                "--plaintext",
                "--post",
                stdin=b"h2c post",
            )
            assert (rc, out) == (0, b"h2c post"), err
    finally:
        echo.close()
