"""`microxds agent`: run a self-configuring node proxy (ztunnel-like) against microxds or istiod."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from hbone.admin.options import AdminOptions
from hbone.admin.options import add_flags as add_admin_flags
from hbone.admin.options import config_keys as admin_config_keys
from hbone.admin.service import Observability
from hbone.commands.runtime import stop_on_signals
from hbone.configtext import PORT, TextError, Where, duration_text, listen_text, target_text, unknown_keys_text
from hbone.errors import ConfigError as HboneConfigError
from hbone.safeyaml import YamlLines, read_limited, safe_load
from microxds.agent import Agent, AgentConfig, Forward
from microxds.agent_admin import agent_view
from microxds.errors import ConfigError
from microxds.istio.node import NodeProfile

HELP = """\
Get certificates (Istio CA API) and workloads, services and authorization policies (Delta xDS: istio.workload.Address,
istio.security.Authorization) from a control plane, serve HBONE on each local workload's address, enforce the
policies there (re-checking open connections on every change), and forward local ports into the mesh.
Against microxds: --transport mtls with a node certificate (--certs); against istiod: --istiod (XDS_ADDRESS,
XDS_ROOT_CA, token, node id and metadata from the environment, as ztunnel reads them).
"""


def duration(text: str) -> dt.timedelta:
    """`90s`, `30m`, `24h`, `90d`, `1h30m` or plain seconds (`hbone.configtext`)."""
    try:
        return dt.timedelta(seconds=duration_text(text))
    except TextError as e:
        raise ConfigError(str(e)) from None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("agent", help="run a self-configuring node proxy", description=HELP)
    p.add_argument("--config", type=Path, metavar="FILE", help="agent YAML (see examples/mesh-agent-alice.yml)")
    p.add_argument(
        "--xds-address",
        metavar="HOST:PORT",
        help="control plane (default 127.0.0.1:15012); replicas: HOST:PORT,HOST:PORT (fail over)",
    )
    p.add_argument("--ca-address", metavar="HOST:PORT", help="CA (default: the xDS address)")
    p.add_argument("--transport", choices=["mtls", "tls", "plaintext"], help="to the control plane (default mtls)")
    p.add_argument("--certs", type=Path, metavar="DIR", help="node certificate for --transport mtls")
    p.add_argument("--workload", action="append", default=[], metavar="NS/NAME", help="a local workload (repeat)")
    p.add_argument(
        "--forward",
        action="append",
        default=[],
        metavar="LISTEN=TARGET",
        help="forward LISTEN (host:port) to TARGET (vip:port or host:port) from the first workload",
    )
    p.add_argument("--hbone-port", type=PORT, help="HBONE port on every workload address (default 15008)")
    p.add_argument("--on-demand", action="store_true", help="Address on demand (XDS_ON_DEMAND)")
    p.add_argument("--istiod", action="store_true", help="istiod profile: settings from the environment")
    add_admin_flags(p)
    p.set_defaults(func=run)


def config_from_yaml(path: Path) -> AgentConfig:
    try:
        text = read_limited(path)
        raw = safe_load(text, str(path)) or {}
    except HboneConfigError as exc:
        raise ConfigError(f"cannot read agent config: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("the agent config must be a mapping", file=str(path))
    return config_from_dict(raw, base=path.parent, source=str(path), lines=YamlLines(text))


def config_from_dict(
    raw: dict[str, Any], *, base: Path = Path("."), source: str = "config", lines: YamlLines | None = None
) -> AgentConfig:
    def error(reason: str, *path: str | int) -> ConfigError:
        return ConfigError(reason, file=source, line=lines.line(path) if lines is not None else None)

    known = sorted({f.name for f in fields(AgentConfig)} | {"node"})
    unknown = unknown_keys_text(raw, known)
    if unknown:
        raise error(unknown, min(str(k) for k in raw if k not in known))
    if "xds_address" not in raw:
        raise error("xds_address is required")
    node = raw.get("node") or {}
    profile_fields = sorted(f.name for f in fields(NodeProfile))
    if not isinstance(node, dict):
        raise error(f"node: expected a mapping with keys among {', '.join(profile_fields)}", "node")
    if (unknown := unknown_keys_text(node, profile_fields)) is not None:
        raise error(f"node: {unknown}", "node", min(str(k) for k in node if k not in profile_fields))
    kw: dict[str, Any] = {k: v for k, v in raw.items() if k != "node"}
    if kw.get("certs") is not None:
        kw["certs"] = base / str(kw["certs"])
    if "cert_ttl" in kw:
        try:
            kw["cert_ttl"] = dt.timedelta(seconds=duration_text(kw["cert_ttl"]))
        except TextError as e:
            raise error(f"cert_ttl: {e}", "cert_ttl") from None
    if "tunnel_idle_timeout" in kw:  # 0: never
        try:
            kw["tunnel_idle_timeout"] = duration_text(kw["tunnel_idle_timeout"]) or None
        except TextError as e:
            raise error(f"tunnel_idle_timeout: {e}", "tunnel_idle_timeout") from None
    for key in ("workloads", "control_plane_identities"):
        if key in kw:
            kw[key] = tuple(str(v) for v in kw[key] or ())
    for key in ("xds_address", "ca_address"):  # HOST:PORT, or replicas HOST:PORT,HOST:PORT
        for address in str(kw.get(key) or "").split(","):
            if address.strip() or key == "xds_address":
                try:
                    target_text(address.strip())
                except TextError as e:
                    raise error(f"{key}: {e}", key) from None
    fwds = []
    for i, item in enumerate(kw.get("forwards") or ()):
        if not isinstance(item, dict) or not {"listen", "target"} <= set(item):
            raise error("each forward needs listen and target (and workload)", "forwards", i)
        for key in ("listen", "target"):
            try:
                listen_text(str(item[key]), "127.0.0.1") if key == "listen" else target_text(str(item[key]))
            except TextError as e:
                raise error(f"forwards[{i}].{key}: {e}", "forwards", i, key) from None
        default = kw.get("workloads", ("",))[0] if kw.get("workloads") else ""
        fwds.append(Forward(str(item["listen"]), str(item["target"]), str(item.get("workload", default))))
    kw["forwards"] = tuple(fwds)
    kw["profile"] = NodeProfile(**{"token_path": None, **node})
    kw.update(admin_config_keys(raw, Where(source, lines=lines)))
    return AgentConfig(**kw)


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if args.config is not None:
        cfg = config_from_yaml(args.config)
    elif args.istiod:
        profile = NodeProfile.from_env()
        cfg = AgentConfig(xds_address=profile.xds_address, ca_address=profile.ca_address, transport="tls",
                          profile=profile, on_demand=profile.on_demand)  # fmt: skip
    else:
        cfg = AgentConfig(xds_address="127.0.0.1:15012")
    changes: dict[str, Any] = {}
    for flag, key in (("xds_address", "xds_address"), ("ca_address", "ca_address"), ("transport", "transport"),
                      ("certs", "certs"), ("hbone_port", "hbone_port"), ("admin", "admin"), ("metrics", "metrics"),
                      ("readiness", "readiness")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            changes[key] = value
    if args.workload:
        changes["workloads"] = tuple(args.workload)
    if args.on_demand:
        changes["on_demand"] = True
    cfg = replace(cfg, **changes)
    if args.forward:
        if not cfg.workloads:
            raise ConfigError("--forward needs a --workload to send from")
        extra = []
        for spec in args.forward:
            listen, sep, target = spec.partition("=")
            if not sep:
                raise ConfigError(f"--forward {spec!r}: use LISTEN=TARGET")
            extra.append(Forward(listen, target, cfg.workloads[0]))
        cfg = replace(cfg, forwards=(*cfg.forwards, *extra))
    if not cfg.workloads:
        raise ConfigError("no local workloads: give --workload NS/NAME or workloads: in --config")
    if cfg.transport == "mtls" and cfg.certs is None:
        raise ConfigError("--transport mtls needs --certs DIR (the node certificate)")
    return cfg


WAITING_REPORT_INTERVAL = 5.0  # seconds between "still waiting for workload …" lines


async def report_waiting(agent: Agent, cfg: AgentConfig, interval: float = WAITING_REPORT_INTERVAL) -> None:
    """Say, every few seconds, which configured workloads the mesh state does not know yet (no silent waits)."""
    while True:
        missing = [ref for ref in cfg.workloads if ref not in agent.workloads]
        if not missing:
            return
        snap = agent.state.snapshot()
        for ref in missing:
            ns = ref.rpartition("/")[0] or "default"
            known = sorted(w.name for w in snap.workloads_in_namespace(ns))[:10]
            print(
                f"microxds agent: waiting for workload {ref}: not in the xDS state from {cfg.xds_address} yet"
                f" (known in namespace {ns}: {', '.join(known) or 'none'})",
                file=sys.stderr,
                flush=True,
            )
        await asyncio.sleep(interval)


async def serve(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    # The admin ports come up first: readiness answers 503 while the agent waits for xDS and certificates.
    keys = {"admin": cfg.admin, "metrics": cfg.metrics, "readiness": cfg.readiness}
    obs = Observability(AdminOptions.resolve(None, keys), agent_view(agent))
    await obs.start()
    for line in obs.describe():
        print(f"microxds agent: {line}", flush=True)
    try:
        await agent.start()
    except BaseException:
        await obs.stop()
        await agent.stop()
        raise
    stop = stop_on_signals()
    waiting = asyncio.get_running_loop().create_task(report_waiting(agent, cfg))
    try:
        for ref, lw in agent.workloads.items():
            print(f"microxds agent: {ref} {lw.workload.identity} hbone {lw.address[0]}:{lw.address[1]}", flush=True)
        for fwd, (host, port) in agent.forward_addresses.items():
            target = next(f.target for f in cfg.forwards if f.listen == fwd)
            print(f"microxds agent: forward {host}:{port} -> {target}", flush=True)
        await stop.wait()
    finally:
        waiting.cancel()
        await agent.stop()
        await obs.stop()


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        print("microxds agent: stopped", file=sys.stderr)
    return 0
