"""Every file under examples/ loads with the loader it is written for, and runs as it is on loopback (issue 16 §9).

microxds configs pass `microxds validate` (tests/unit/test_xds_validate.py checks each); the agent configs point at
the certificates `hbone mesh init .mesh` writes and at its ports; the access rules, the bootstraps and the Python
examples load; every command an example's comments show parses with today's CLI; nothing binds all interfaces.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from hbone.cli import build_parser as hbone_parser
from hbone.commands.mesh import MeshPlan
from microxds.cli import build_parser as microxds_parser
from microxds.commands.agent import config_from_yaml
from microxds.server.access import load_policy
from microxds.validate import validate_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ALL = sorted(p for p in EXAMPLES.rglob("*") if p.is_file())
COMMAND = re.compile(r"`((?:microxds|hbone) [^`]+)`")


def test_every_example_is_covered() -> None:
    kinds = {p.suffix for p in ALL}
    assert kinds <= {".yaml", ".yml", ".json", ".py"}, kinds  # a new kind of example needs a loader below


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(EXAMPLES)) for p in ALL])
def test_example_loads(path: Path) -> None:
    rel = path.relative_to(EXAMPLES).as_posix()
    if rel.startswith("mesh-agent-"):
        cfg = config_from_yaml(path)
        plan = MeshPlan(ROOT / ".mesh")
        assert cfg.certs is not None and cfg.certs.resolve() == (plan.dir / "node").resolve()
        assert cfg.xds_address == f"127.0.0.1:{plan.xds_port}" and cfg.hbone_port == plan.hbone_port
        assert cfg.control_plane_identities == (plan.istiod_id,)
    elif rel.startswith("access/"):
        load_policy(path)
    elif rel == "bootstrap/grpc-xds.json":
        doc = json.loads(path.read_text())
        assert doc["xds_servers"][0]["server_uri"].startswith("127.0.0.1:") and "locality" in doc["node"]
    elif rel.startswith("bootstrap/"):
        doc = yaml.safe_load(path.read_text())
        assert doc["dynamic_resources"]["ads_config"]["api_type"] in ("GRPC", "DELTA_GRPC")
    elif path.suffix == ".py":
        ast.parse(path.read_text(), str(path))
    else:
        report = validate_path(path)
        assert report.ok, report.lines()


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(EXAMPLES)) for p in ALL])
def test_example_commands_parse_and_stay_on_loopback(path: Path) -> None:
    text = path.read_text()
    for command in COMMAND.findall(text):
        words = shlex.split(command)
        parser = {"hbone": hbone_parser, "microxds": microxds_parser}[words[0]]()
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            raise AssertionError(f"{path.name} shows `{command}`, which no longer parses") from exc
    for n, line in enumerate(text.splitlines(), 1):
        if "0.0.0.0" in line and "#" not in line:
            raise AssertionError(f"{path.name}:{n} binds all interfaces without a comment saying so: {line.strip()}")
