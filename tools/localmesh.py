"""A local ambient mesh in one command: microxds (dev CA + YAML config) and two agents with echo apps.

    python tools/localmesh.py            # run the demo: allowed, denied by a policy (401), allowed again
    python tools/localmesh.py --keep     # ... then keep running until Ctrl-C, printing commands to try against it

At the end it prints the same mesh as separate commands (`hbone mesh init`, then one command per piece), so it
can be rebuilt CLI by CLI and taken apart.

Everything is on loopback: microxds on 127.0.0.1, workloads alice and bob on their own loopback addresses
(127.X.Y.2 and .3, all of 127/8 is local on Linux) with HBONE on one shared port, echo apps on bob's address.
alice's agent forwards a local port to `bob.default.svc.cluster.local:80` through the mesh. The policy is added
to and removed from the YAML file that microxds watches; the agents get it over Delta xDS.

`LocalMesh` is also the harness of the agent integration tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hbone.commands.mesh import MeshPlan
from hbone.identity import CertificateAuthority, SpiffeId, write_bundle
from hbone.testing import start_echo_server
from microxds.agent import Agent, AgentConfig, Forward
from microxds.istio.ca import CaService, attach_ca
from microxds.istio.node import NodeProfile
from microxds.server.app import ControlPlane, ServeOptions

TRUST_DOMAIN = "cluster.local"
NODE_ID = f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/ztunnel"
ISTIOD_ID = f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/istiod"
APP_PORT = 8080
SERVICE_VIP = "10.96.0.20"

DENY_ALICE = """
policies:
  - name: deny-alice
    namespace: default
    action: DENY
    selector: { matchLabels: { app: bob } }
    rules:
      - from: [{ source: { principals: ["cluster.local/ns/default/sa/alice"] } }]
"""


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalMesh:
    """microxds + agents + echo apps on loopback, in this process. `async with LocalMesh(dir) as mesh: ...`"""

    def __init__(self, workdir: Path, *, subnet: str | None = None, hbone_port: int | None = None) -> None:
        self.dir = Path(workdir)
        # A random /24 inside 127/8, so concurrent meshes (tests, engineers) do not collide.
        self.subnet = subnet or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.hbone_port = hbone_port or _free_port()
        self.ca = CertificateAuthority.create_root(TRUST_DOMAIN)
        self.config_path = self.dir / "mesh.yaml"
        self.plane: ControlPlane | None = None
        self.ca_services: list[CaService] = []
        self.xds_port = 0
        self.agents: dict[str, Agent] = {}
        self._apps: list[asyncio.Server] = []
        self.extra_config = ""
        #: When set, a `waypoint` workload (its own loopback IP) serves HBONE on this port and bob's service names
        #: it as its waypoint (the Envoy waypoint interop test).
        self.waypoint_port: int | None = None

    def ip(self, name: str) -> str:
        return f"{self.subnet}.{ {'alice': 2, 'bob': 3, 'waypoint': 4}[name] }"

    # -- files ----------------------------------------------------------------------------------------------------

    def base_config(self) -> str:
        waypoint_workload = waypoint_ref = ""
        if self.waypoint_port is not None:
            wp = self.ip("waypoint")
            waypoint_workload = f"""
  - {{ name: waypoint, namespace: default, addresses: ["{wp}"], serviceAccount: waypoint }}"""
            waypoint_ref = f"""
    waypoint: {{ address: "{wp}", port: {self.waypoint_port} }}"""
        return f"""
workloads:
  - {{ name: alice, namespace: default, addresses: ["{self.ip("alice")}"], serviceAccount: alice,
      labels: {{ app: alice }} }}
  - {{ name: bob, namespace: default, addresses: ["{self.ip("bob")}"], serviceAccount: bob, labels: {{ app: bob }} }}\
{waypoint_workload}
services:
  - name: bob
    namespace: default
    addresses: ["{SERVICE_VIP}"]
    ports: [{{ port: 80, targetPort: {APP_PORT} }}]
    workloads: [bob]{waypoint_ref}
"""

    def write_config(self, extra: str = "") -> None:
        """Replace the config atomically (microxds polls it); `extra` is more YAML (e.g. `policies:`)."""
        self.extra_config = extra
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(self.base_config() + extra)
        tmp.replace(self.config_path)

    def write_certs(self, name: str, spiffe: str) -> Path:
        path = self.dir / "certs" / name
        write_bundle(path, self.ca.issue(SpiffeId.parse(spiffe)))
        return path

    # -- processes --------------------------------------------------------------------------------------------------

    async def start_control_plane(self, port: int = 0, **options: Any) -> int:
        """`options` go to `ServeOptions` (e.g. a plaintext `listen` for Envoy, `metrics_listen` for /debug)."""
        if not self.config_path.exists():
            self.write_config()
        certs = self.dir / "certs" / "istiod"
        if not certs.exists():
            self.write_certs("istiod", ISTIOD_ID)
        opts = ServeOptions(
            **{"config": self.config_path, "listen": None, "hbone_listen": f"127.0.0.1:{port or self.xds_port}",
               "certs": certs, "quiet": 0.05, "max_delay": 0.3, "poll_interval": 0.05, **options},
        )  # fmt: skip
        plane = ControlPlane(opts)
        self.ca_services = attach_ca(plane, self.ca, trusted_node_identities=[NODE_ID])
        await plane.start()
        self.plane = plane
        self.xds_port = plane.addresses["hbone"][1]
        return self.xds_port

    async def stop_control_plane(self) -> None:
        if self.plane is not None:
            await self.plane.stop(grace=0.5)
            self.plane = None

    async def start_app(self, name: str) -> int:
        server, port = await start_echo_server(self.ip(name), APP_PORT)
        self._apps.append(server)
        return port

    async def start_agent(self, name: str, forwards: tuple[Forward, ...] = (), **overrides: Any) -> Agent:
        node_certs = self.dir / "certs" / "node"
        if not node_certs.exists():
            self.write_certs("node", NODE_ID)
        cfg = AgentConfig(
            xds_address=f"127.0.0.1:{self.xds_port}",
            certs=node_certs,
            control_plane_identities=(ISTIOD_ID,),
            workloads=(f"default/{name}",),
            forwards=forwards,
            hbone_port=self.hbone_port,
            profile=NodeProfile(instance_ip=self.ip(name), pod_name=f"ztunnel-{name}", token_path=None),
            ready_timeout=15.0,
            **overrides,
        )
        agent = Agent(cfg)
        await agent.start()
        self.agents[name] = agent
        return agent

    async def start(self) -> None:
        await self.start_control_plane()
        await self.start_app("bob")
        await self.start_agent("bob")
        fwd = Forward(f"{self.ip('alice')}:0", "bob.default.svc.cluster.local:80", "default/alice")
        await self.start_agent("alice", (fwd,))

    def forward_port(self) -> int:
        return next(iter(self.agents["alice"].forward_addresses.values()))[1]

    async def stop(self) -> None:
        for agent in self.agents.values():
            await agent.stop()
        self.agents.clear()
        await self.stop_control_plane()
        for app in self._apps:
            app.close()
        self._apps.clear()

    async def __aenter__(self) -> LocalMesh:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- probes -----------------------------------------------------------------------------------------------------

    async def round_trip(self, payload: bytes = b"hello bob", timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        """alice → (forward port) → mesh → bob's echo app; returns what came back (b"" when refused)."""
        reader, writer = await asyncio.open_connection(self.ip("alice"), self.forward_port())
        try:
            writer.write(payload)
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), timeout)
        except ConnectionError:
            return b""
        finally:
            writer.close()


async def demo(keep: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="localmesh-") as tmp:
        async with LocalMesh(Path(tmp)) as mesh:
            print(f"microxds: xDS + CA on 127.0.0.1:{mesh.xds_port} (HBONE mTLS), config {mesh.config_path}")
            for name, agent in mesh.agents.items():
                lw = agent.local(f"default/{name}")
                print(f"agent {name}: {lw.workload.identity} serving HBONE on {lw.address[0]}:{lw.address[1]}")
            print(f"alice forward: {mesh.ip('alice')}:{mesh.forward_port()} -> bob.default.svc.cluster.local:80")
            ok = await mesh.round_trip(b"ping")
            print(f"1. alice -> bob: {'allowed, echoed ' + repr(ok) if ok else 'FAILED'}")
            mesh.write_config(DENY_ALICE)
            started = time.monotonic()
            denied = await _wait_for(mesh, expect_ok=False)
            bob = mesh.agents["bob"].local("default/bob").inbound
            print(f"2. policy deny-alice added: denied after {time.monotonic() - started:.2f}s "
                  f"(bob's agent answered 401 {bob.denied} time(s))")  # fmt: skip
            mesh.write_config()
            allowed = await _wait_for(mesh, expect_ok=True)
            print(f"3. policy removed: {'allowed again' if allowed else 'still denied'}")
            print_by_hand()
            if keep:
                print_try(mesh)
                print("running; Ctrl-C to stop")
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            return 0 if ok and denied and allowed else 1


def print_by_hand() -> None:
    """The pieces this process ran, as the commands that start each by hand (`hbone mesh init` writes the files)."""
    plan = MeshPlan(Path(".mesh"))  # the defaults of the README's quick start (127.0.0.2/3, :15012, :15008)
    print("\nThe same mesh, CLI by CLI (each command in its own terminal):\n  hbone mesh init .mesh")
    for what, cmd in plan.start_commands():
        print(f"  {cmd}    # {what}")
    print("then try:")
    for what, cmd in plan.try_commands():
        print(f"  {cmd}    # {what}")


def print_try(mesh: LocalMesh) -> None:
    """Commands against the mesh this process keeps running."""
    certs = mesh.dir / "certs" / "node"
    print("\nThis mesh keeps running; try:")
    print(f"  microxds dump --server 127.0.0.1:{mesh.xds_port} --certs {certs} --type workload --summary")
    print(f"  microxds dump --server 127.0.0.1:{mesh.xds_port} --certs {certs} --type address --delta --watch")
    print(f"  microxds validate {mesh.config_path}")
    print(f"  hbone probe {mesh.ip('bob')}:{mesh.hbone_port} --target {mesh.ip('bob')}:{APP_PORT} --certs {certs}")
    print(f"  edit {mesh.config_path} (e.g. add the deny-alice policy): the agents follow within a second")


async def _wait_for(mesh: LocalMesh, *, expect_ok: bool, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bool(await mesh.round_trip(b"ping")) == expect_ok:
            return True
        await asyncio.sleep(0.1)  # poll interval for a demo, not synchronisation
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the mesh running after the demo")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return asyncio.run(demo(args.keep))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
