"""`hbone mesh init DIR`: the files of the README's local mesh, so it comes up CLI by CLI (what `tools/mesh.sh` runs
in one process): a dev CA, the control plane's and the node's identities, microxds's config, two agent configs,
a policy to try; then it prints the command that starts each piece and the commands to try next.

Everything on loopback: microxds on 127.0.0.1, workloads alice and bob on their own loopback addresses
(SUBNET.2 and SUBNET.3; all of 127/8 is local on Linux). The defaults match `examples/mesh-agent-*.yml`, which
point at `.mesh/` (`hbone mesh init .mesh` from the repository root).
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path

from hbone.configtext import PORT
from hbone.errors import ConfigError
from hbone.identity.bundle import write_bundle, write_ca
from hbone.identity.certs import CertificateAuthority
from hbone.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class MeshPlan:
    dir: Path
    trust_domain: str = "cluster.local"
    subnet: str = "127.0.0"
    xds_port: int = 15012
    hbone_port: int = 15008
    app_port: int = 8080
    forward_port: int = 9080

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    @property
    def node_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/istio-system/sa/ztunnel"

    @property
    def istiod_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/istio-system/sa/istiod"

    def start_commands(self) -> list[tuple[str, str]]:
        """(what, command) for each long-running piece, in start order; each in its own terminal."""
        d = shlex.quote(str(self.dir))
        return [
            ("control plane: xDS + CA on mesh mTLS", f"microxds serve --config {d}/mesh.yaml --listen off "
             f"--hbone-listen 127.0.0.1:{self.xds_port} --certs {d}/istiod --ca {d}/ca "
             f"--ca-trusted-node {self.node_id}"),
            ("bob's app (any TCP server will do)", f"python3 -m http.server {self.app_port} --bind {self.ip(3)}"),
            ("bob's node agent", f"microxds agent --config {d}/agent-bob.yml"),
            (f"alice's node agent (forwards {self.ip(2)}:{self.forward_port})",
             f"microxds agent --config {d}/agent-alice.yml"),
        ]  # fmt: skip

    def try_commands(self) -> list[tuple[str, str]]:
        d = shlex.quote(str(self.dir))
        xds = f"127.0.0.1:{self.xds_port}"
        return [
            ("alice -> mesh -> bob's app", f"curl -sS http://{self.ip(2)}:{self.forward_port}/"),
            ("what the control plane serves",
             f"microxds dump --server {xds} --certs {d}/node --type workload --summary"),
            ("check the config offline", f"microxds validate {d}/mesh.yaml"),
            ("a policy edit: deny alice (curl now fails)", f"cat {d}/deny-alice.yaml >> {d}/mesh.yaml"),
        ]  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mesh", help="the local mesh of the quick start, piece by piece")
    msub = p.add_subparsers(dest="mesh_command", required=True, metavar="SUBCOMMAND")
    init = msub.add_parser("init", help="write CA, identities and configs; print the commands that start the mesh")
    init.add_argument("dir", type=Path, metavar="DIR", help="where to write (examples/mesh-agent-*.yml use .mesh)")
    init.add_argument("--trust-domain", default="cluster.local", metavar="TD")
    init.add_argument("--subnet", default="127.0.0", metavar="A.B.C", help="workloads on A.B.C.2 and A.B.C.3")
    init.add_argument("--xds-port", type=PORT, default=15012, metavar="P", help="microxds xDS + CA (mTLS)")
    init.add_argument("--hbone-port", type=PORT, default=15008, metavar="P", help="agents' HBONE port")
    init.add_argument("--app-port", type=PORT, default=8080, metavar="P", help="bob's app")
    init.add_argument("--forward-port", type=PORT, default=9080, metavar="P", help="alice's forward into the mesh")
    init.add_argument("--force", action="store_true", help="overwrite an existing DIR")
    init.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    try:
        net = ipaddress.IPv4Network(f"{args.subnet}.0/24")
    except ValueError:
        raise ConfigError(f"--subnet {args.subnet!r}: use three octets inside 127/8, e.g. 127.0.0") from None
    if not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise ConfigError(f"--subnet {args.subnet}: the local mesh stays on loopback (127.x.y)")
    if (args.dir / "ca").exists() and not args.force:
        raise ConfigError(f"{args.dir} already holds a mesh: choose another DIR or add --force")
    plan = MeshPlan(args.dir.resolve(), args.trust_domain, args.subnet, args.xds_port, args.hbone_port,
                    args.app_port, args.forward_port)  # fmt: skip
    write(plan)
    print(f"wrote the mesh to {plan.dir}: ca/, istiod/, node/, mesh.yaml, agent-alice.yml, agent-bob.yml")
    print("\nStart each piece in its own terminal, in this order:")
    for what, cmd in plan.start_commands():
        print(f"  # {what}\n  {cmd}")
    print("\nThen try:")
    for what, cmd in plan.try_commands():
        print(f"  # {what}\n  {cmd}")
    return 0


def write(plan: MeshPlan) -> None:
    d = plan.dir
    ca = CertificateAuthority.create_root(plan.trust_domain)
    write_ca(d / "ca", ca)
    write_bundle(d / "istiod", ca.issue(SpiffeId.parse(plan.istiod_id)))
    write_bundle(d / "node", ca.issue(SpiffeId.parse(plan.node_id)))
    (d / "mesh.yaml").write_text(f"""# microxds config of the local mesh (`hbone mesh init`): alice and bob on their own
# loopback addresses, bob's service on a VIP, port 80 -> {plan.app_port}. Edit it while microxds runs: agents follow.
workloads:
  - {{ name: alice, namespace: default, addresses: ["{plan.ip(2)}"], serviceAccount: alice, labels: {{ app: alice }} }}
  - {{ name: bob, namespace: default, addresses: ["{plan.ip(3)}"], serviceAccount: bob, labels: {{ app: bob }} }}
services:
  - name: bob
    namespace: default
    addresses: ["10.96.0.20"]
    ports: [{{ port: 80, targetPort: {plan.app_port} }}]
    workloads: [bob]
""")
    (d / "deny-alice.yaml").write_text(f"""policies:
  - name: deny-alice
    namespace: default
    action: DENY
    selector: {{ matchLabels: {{ app: bob }} }}
    rules:
      - from: [{{ source: {{ principals: ["{plan.trust_domain}/ns/default/sa/alice"] }} }}]
""")
    for name, host in (("alice", 2), ("bob", 3)):
        forwards = (
            f'forwards:\n  - {{ listen: "{plan.ip(2)}:{plan.forward_port}", '
            'target: "bob.default.svc.cluster.local:80", workload: default/alice }\n'
            if name == "alice" else ""
        )  # fmt: skip
        (d / f"agent-{name}.yml").write_text(
            f"# `microxds agent --config {d}/agent-{name}.yml`: the node agent for default/{name}.\n"
            f"xds_address: 127.0.0.1:{plan.xds_port}\ntransport: mtls\ncerts: node\n"
            f'control_plane_identities: ["{plan.istiod_id}"]\nworkloads: [default/{name}]\n'
            f"hbone_port: {plan.hbone_port}\n{forwards}"
            # Each agent's admin ports on its own address: two agents on one machine never collide.
            f"admin: {plan.ip(host)}:15000\nmetrics: {plan.ip(host)}:15020\nreadiness: {plan.ip(host)}:15021\n"
            f"node:\n  instance_ip: {plan.ip(host)}\n  pod_name: ztunnel-{name}\n"
        )
