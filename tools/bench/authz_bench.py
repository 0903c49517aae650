"""Micro benchmark for hbone.authz: evaluations/s with 10, 1k and 10k policies in the mesh.

Two figures per size:
- indexed: policies spread over namespaces (10 per namespace, plus 5 mesh-wide GLOBAL ones); each evaluation
  selects the destination workload's policies through `PolicyIndex.for_workload` and evaluates them — what the
  inbound proxy does per connection;
- flat: every policy applies to the one workload (worst case: nothing is indexed away).

The connection matches no ALLOW policy, so every applicable policy is scanned. Ratios are against the 10-policy run.
Usage: python tools/bench/authz_bench.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable

from hbone.authz.config import policy_from_dict
from hbone.authz.engine import PolicyIndex, evaluate
from hbone.authz.model import Connection, Policy
from hbone.identity.spiffe import SpiffeId


def make_policies(n: int) -> list[Policy]:
    out: list[Policy] = []
    for i in range(n):
        ns = f"ns{i // 10}"
        kind = i % 4
        if kind == 0:
            rule = {"from": [{"principals": [f"cluster.local/ns/client{i}/sa/default", f"cluster.local/ns/x{i}/*"]}]}
        elif kind == 1:
            rule = {"from": [{"namespaces": [f"team{i}", f"team{i}-*"]}], "to": [{"ports": [8000 + i % 100]}]}
        elif kind == 2:
            rule = {
                "from": [{"ipBlocks": [f"10.{i % 250}.0.0/16"]}],
                "when": [{"key": "destination.port", "values": ["9"]}],
            }
        else:
            rule = {"from": [{"serviceAccounts": [f"ns{i}/sa{i}"], "notNamespaces": ["blocked"]}]}
        action = "DENY" if i % 5 == 0 else "ALLOW"
        out.append(policy_from_dict({"name": f"p{i}", "namespace": ns, "action": action, "rules": [rule]}))
    return out


def rate(fn: Callable[[], object], seconds: float) -> float:
    for _ in range(100):  # warm up: compiles the policies
        fn()
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per figure")
    args = parser.parse_args()
    conn = Connection(
        src_identity=SpiffeId.istio("cluster.local", "outsider", "default"),
        src_ip=ipaddress.ip_address("192.168.1.1"),
        dst_ip=ipaddress.ip_address("10.9.9.9"),
        dst_port=8080,
        dst_namespace="ns0",
    )
    globals_ = [
        policy_from_dict({"name": f"g{i}", "namespace": "istio-system", "action": "DENY",
                          "rules": [{"from": [{"notNamespaces": ["*"]}], "to": [{"ports": [7000 + i]}]}]})
        for i in range(5)
    ]  # fmt: skip
    print(f"{'policies':>9} {'indexed eval/s':>15} {'ratio':>6} {'flat eval/s':>12} {'ratio':>6}")
    base: tuple[float, float] | None = None
    for n in (10, 1_000, 10_000):
        pols = make_policies(n)
        index = PolicyIndex([*pols, *globals_])
        indexed = rate(lambda index=index: evaluate(index.for_workload(conn.dst_namespace), conn), args.seconds)
        flat = rate(lambda pols=pols: evaluate(pols, conn), args.seconds)
        if base is None:
            base = (indexed, flat)
        print(f"{n:>9} {indexed:>15,.0f} {indexed / base[0]:>6.2f} {flat:>12,.0f} {flat / base[1]:>6.3f}")


if __name__ == "__main__":
    main()
