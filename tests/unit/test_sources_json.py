"""JSON files: parsed by `json` (fast reload), lines composed only when an error or an origin needs them."""

from __future__ import annotations

import json

import pytest

from microxds import resources
from microxds.errors import ConfigError
from microxds.sources.yamlconfig import parse_texts

CDS = resources.CLUSTER


def _cluster(name: str, **extra: object) -> dict[str, object]:
    return {"@type": CDS, "name": name, "connect_timeout": "1s", **extra}


def test_valid_json_origin_has_its_line() -> None:
    text = json.dumps({"resources": [_cluster("a"), _cluster("b")]}, indent=1)
    fast = parse_texts([("cfg.json", text)])
    tracked = parse_texts([("cfg.yaml", text)])  # the line-tracking loader, eagerly
    assert fast.origin(CDS, "b") == tracked.origin(CDS, "b").replace(".yaml", ".json")  # type: ignore[union-attr]
    assert fast.origin(CDS, "b") != "cfg.json:1" and fast.version == tracked.version


def test_invalid_json_resource_error_points_at_its_line() -> None:
    text = json.dumps({"resources": [_cluster("a"), _cluster("b", no_such_field=1)]}, indent=1)
    with pytest.raises(ConfigError) as info:
        parse_texts([("cfg.json", text)])
    assert info.value.file == "cfg.json"
    assert text.splitlines()[info.value.line - 1].strip().startswith('"no_such_field"')


def test_yaml_in_a_json_file_still_loads() -> None:
    snap = parse_texts([("cfg.json", f"resources:\n- '@type': {CDS}\n  name: y\n")])
    assert snap.origin(CDS, "y") == "cfg.json:2"
