"""What `microxds agent` shows on its admin ports: certificates, mesh state, xDS state, readiness (ztunnel's)."""

from __future__ import annotations

from typing import Any

from hbone.admin.dump import plain
from hbone.admin.service import DaemonView, loaded
from hbone.admin.telemetry import XdsCounters
from hbone.identity.certs import CertifiedKey
from microxds.agent import Agent
from microxds.client.state import DeltaSession


def agent_view(agent: Agent) -> DaemonView:
    def certificates() -> list[CertifiedKey]:
        return loaded(agent.node_identity, *(lw.identity for lw in agent.workloads.values()))

    def config() -> dict[str, Any]:
        snap = agent.state.snapshot()
        return {
            "listeners": [
                *({"workload": ref, "identity": str(lw.workload.identity), "hbone": f"{lw.address[0]}:{lw.address[1]}"}
                  for ref, lw in agent.workloads.items()),
                *({"forward": f"{h}:{p}", "listen": listen} for listen, (h, p) in agent.forward_addresses.items()),
            ],
            "routes": [{"listen": f.listen, "target": f.target, "workload": f.workload} for f in agent.config.forwards],
            "workloads": {uid: plain(w) for uid, w in snap.workloads.items()},
            "services": {key: plain(s) for key, s in snap.services.items()},
            "policies": {key: plain(p) for key, p in snap.policies.items()},
            "xds": xds_state(agent),
        }  # fmt: skip

    def not_ready() -> str | None:
        ads = agent.ads
        if ads is None or not isinstance(ads.session, DeltaSession):
            return "xDS not started"
        waiting = [t for t, s in ads.session.types.items() if not s.acked and not s.spec.on_demand]
        if waiting:
            return "xDS types not ACKed yet: " + ", ".join(waiting)
        if len(agent.workloads) < len(agent.config.workloads):
            return "local workloads not serving yet"
        if any(not loaded(lw.identity) for lw in agent.workloads.values()):
            return "certificates not loaded"
        return None

    def xds() -> XdsCounters:
        ads = agent.ads
        if ads is None or not isinstance(ads.session, DeltaSession):
            return XdsCounters()
        return XdsCounters({t: s.stats.responses for t, s in ads.session.types.items()}, dict(ads.terminations))

    return DaemonView(certificates=certificates, config=config, not_ready=not_ready, xds=xds)


def xds_state(agent: Agent) -> dict[str, Any]:
    """Per type: resources held with their versions, ACK/NACK counts and the last NACK (the agent's CSDS view)."""
    ads = agent.ads
    out: dict[str, Any] = {"server": agent.config.xds_address, "connected": bool(ads and ads.connected.is_set())}
    if ads is None or not isinstance(ads.session, DeltaSession):
        return out
    out["last_error"] = ads.last_error
    out["types"] = {
        t: {"acked": s.acked, "responses": s.stats.responses, "acks": s.stats.acks, "nacks": s.stats.nacks,
            "last_nack": s.stats.last_nack or None, "versions": dict(sorted(s.known.items()))}
        for t, s in ads.session.types.items()
    }  # fmt: skip
    return out
