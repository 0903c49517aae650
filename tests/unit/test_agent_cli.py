"""`microxds agent` configuration: the example files, flags, and clear errors."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from microxds.agent import Forward
from microxds.commands.agent import config_from_args, config_from_dict, config_from_yaml, duration, register
from microxds.errors import ConfigError
from microxds.sources.files import FileSource
from tests.configfiles import load_error

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["agent", *argv])


def test_example_agent_files_load() -> None:
    alice = config_from_yaml(EXAMPLES / "mesh-agent-alice.yml")
    assert alice.workloads == ("default/alice",) and alice.transport == "mtls"
    assert alice.certs == EXAMPLES / "../.mesh/node"
    assert alice.cert_ttl == dt.timedelta(hours=24)
    assert alice.forwards == (Forward("127.0.0.2:9080", "bob.default.svc.cluster.local:80", "default/alice"),)
    assert alice.profile.node_id == "ztunnel~127.0.0.2~ztunnel-alice.istio-system~istio-system.svc.cluster.local"
    assert config_from_yaml(EXAMPLES / "mesh-agent-bob.yml").workloads == ("default/bob",)


def test_example_mesh_config_is_valid_for_microxds() -> None:
    snap = FileSource(EXAMPLES / "mesh-config.yaml").load_now()
    assert snap is not None and snap.count() == 3  # two workloads and a service


def test_flags_override_and_build_forwards(tmp_path: Path) -> None:
    args = parse("--xds-address", "127.0.0.1:1", "--transport", "plaintext", "--workload", "default/alice",
                 "--forward", "127.0.0.2:0=10.96.0.20:80", "--hbone-port", "15999")  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.xds_address, cfg.transport, cfg.hbone_port) == ("127.0.0.1:1", "plaintext", 15999)
    assert cfg.forwards == (Forward("127.0.0.2:0", "10.96.0.20:80", "default/alice"),)


def test_istiod_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDS_ADDRESS", "istiod.example:15012")
    monkeypatch.setenv("XDS_ON_DEMAND", "true")
    cfg = config_from_args(parse("--istiod", "--workload", "default/alice"))
    assert cfg.transport == "tls" and cfg.xds_address == "istiod.example:15012" and cfg.on_demand


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "xds_address is required"),
        ({"xds_address": "a:1", "bogus": 1}, "unknown key 'bogus'; known: admin, ca_address"),
        ({"xds_address": "a:1", "cert_tll": 1}, r"unknown key 'cert_tll' \(did you mean 'cert_ttl'\?\)$"),
        ({"xds_address": "a:1", "node": {"nope": 1}}, "node: unknown key 'nope'; known: "),
        ({"xds_address": "a:1", "forwards": [{"listen": "x:1"}]}, "listen and target"),
        ({"xds_address": "a:1", "cert_ttl": "soon"}, "cert_ttl: invalid duration 'soon': use e.g. 250ms"),
    ],
)
def test_config_errors_are_clear(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_missing_workloads_or_certs_are_errors() -> None:
    with pytest.raises(ConfigError, match="no local workloads"):
        config_from_args(parse("--transport", "plaintext"))
    with pytest.raises(ConfigError, match="needs --certs"):
        config_from_args(parse("--workload", "default/a"))
    assert duration("90") == dt.timedelta(seconds=90) and duration("2m") == dt.timedelta(minutes=2)


def agent_error(path: Path, text: str) -> str:
    """The error loading `text` as an agent config file raises (microxds' own ConfigError)."""
    return load_error(config_from_yaml, path, text, ConfigError)


def test_config_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    assert agent_error(path, "xds_address: a:1\n\ncert_ttl: 1y\n").startswith(
        f"{path}:3: cert_ttl: invalid duration '1y'"
    )
    assert agent_error(path, "xds_address: a:1\nnode:\n  pod_nmae: x\n") == (
        f"{path}:3: node: unknown key 'pod_nmae' (did you mean 'pod_name'?)"
    )


def test_addresses_are_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    assert agent_error(path, "xds_address: a:1,b\nworkloads: [ns/a]\n") == (
        f"{path}:1: xds_address: authority 'b' has no port; expected host:port"
    )
    assert agent_error(path, "xds_address: a:1\nforwards:\n  - {listen: ':9080', target: echo}\n") == (
        f"{path}:3: forwards[0].target: authority 'echo' has no port; expected host:port"
    )
