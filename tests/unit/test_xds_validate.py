"""`microxds validate` and the checks `serve` applies on every load/reload: Envoy's proto rules, cross-references."""

from __future__ import annotations

from pathlib import Path

import pytest

from microxds.cli import main
from microxds.protoreg import parse_message
from microxds.sources.files import FileSource
from microxds.sources.pgv import check
from microxds.validate import validate_path, validate_texts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

EDS_CLUSTER = f"""
  - "@type": {CLUSTER}
    name: echo
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}
"""
NO_ADDRESS = f"""resources:{EDS_CLUSTER}
  - "@type": {CLA}
    cluster_name: echo
    endpoints:
      - lb_endpoints:
          - endpoint: {{}}
"""


def _listener(route: str) -> str:
    return f"""
  - "@type": {LISTENER}
    name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 10080 }} }}
    filter_chains:
      - filters:
          - name: hcm
            typed_config:
              "@type": {HCM}
              stat_prefix: http
              {route}
              http_filters: [{{ name: router, typed_config: {{ "@type": {ROUTER} }} }}]
"""


INLINE_MISSING = "resources:" + _listener(
    "route_config: { virtual_hosts: [{ name: a, domains: ['*'], routes: [{ match: { prefix: / }, "
    "route: { cluster: nowhere } }] }] }"
)
RDS = "rds: { route_config_name: r, config_source: { ads: {} } }"


def _rds_missing(validate_clusters: bool) -> str:
    extra = "\n    validate_clusters: true" if validate_clusters else ""
    return f"""resources:{_listener(RDS)}
  - "@type": {ROUTE}
    name: r{extra}
    virtual_hosts:
      - name: a
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: nowhere }}
"""


def test_endpoint_without_address_is_an_error_at_its_line() -> None:
    report = validate_texts("t", [("cfg.yaml", NO_ADDRESS)])
    assert not report.ok
    assert report.errors == [
        "cfg.yaml:8: ClusterLoadAssignment 'echo': endpoints[0].lb_endpoints[0].endpoint has no address "
        "(Envoy NACKs it)"
    ]


def test_inline_route_to_missing_cluster_is_an_error() -> None:
    report = validate_texts("t", [("cfg.yaml", INLINE_MISSING)])
    assert len(report.errors) == 1, report.errors
    assert report.errors[0].startswith("cfg.yaml:2: Listener 'http': inline route names unknown cluster 'nowhere'")


def test_rds_route_to_missing_cluster_warns_unless_validate_clusters() -> None:
    lenient = validate_texts("t", [("cfg.yaml", _rds_missing(False))])
    assert lenient.ok and not lenient.errors
    assert lenient.warnings == ["cfg.yaml:14: RouteConfiguration 'r': cluster 'nowhere' is missing (Envoy answers 503)"]
    assert not validate_texts("t", [("cfg.yaml", _rds_missing(False))], strict=True).ok
    strict = validate_texts("t", [("cfg.yaml", _rds_missing(True))])
    assert strict.errors and "validate_clusters (Envoy NACKs it)" in strict.errors[0]


def test_dangling_references_are_warnings() -> None:
    text = "resources:" + _listener(RDS) + EDS_CLUSTER
    report = validate_texts("t", [("cfg.yaml", text)])
    assert report.ok
    assert [w.split(": ", 1)[1] for w in report.warnings] == [
        "Listener 'http': route configuration 'r' is missing (the listener stays warming)",
        "Cluster 'echo': EDS ClusterLoadAssignment 'echo' is missing (the cluster stays warming)",
    ]


def test_service_without_workloads_warns() -> None:
    text = """
services:
  - { name: lonely, namespace: default, addresses: ["10.96.0.9"], ports: [{ port: 80, targetPort: 8080 }] }
"""
    report = validate_texts("t", [("cfg.yaml", text)])
    assert report.ok
    assert any("default/lonely.default.svc.cluster.local has no workloads" in w for w in report.warnings), report


def test_proto_rules_point_at_the_field() -> None:
    text = f"""resources:
  - "@type": {CLUSTER}
    name: c
    type: STATIC
    connect_timeout: 0s
    lb_policy: 99
"""
    report = validate_texts("t", [("cfg.yaml", text)])
    assert report.errors == [
        "cfg.yaml:5: connect_timeout: must be > 0s, got 0s",
        "cfg.yaml:6: lb_policy: 99 is not a defined LbPolicy value",
    ]


@pytest.mark.parametrize(
    ("message", "type_name", "expected"),
    [
        ({"cluster_name": ""}, "envoy.config.endpoint.v3.ClusterLoadAssignment", ["cluster_name: must not be empty"]),
        (
            {"cluster_name": "c", "endpoints": [{"load_balancing_weight": 0, "lb_endpoints": []}]},
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            ["endpoints[0].load_balancing_weight: must be >= 1, got 0"],
        ),
        (
            {"socket_address": {"address": "", "port_value": 70000}},
            "envoy.config.core.v3.Address",
            ["socket_address.address: must not be empty", "socket_address.port_value: must be <= 65535, got 70000"],
        ),
        ({"name": "x"}, "envoy.config.listener.v3.Listener", []),
        (
            {"name": "v", "domains": []},
            "envoy.config.route.v3.VirtualHost",
            ["domains: needs at least 1 item(s), has 0"],
        ),
        (
            {"name": "x-ok", "string_match": {"exact": "v"}},
            "envoy.config.route.v3.HeaderMatcher",
            [],
        ),
        (
            {"name": "bad name", "string_match": {"exact": "v"}},
            "envoy.config.route.v3.HeaderMatcher",
            ["name: must be a valid HTTP header name"],
        ),
    ],
)
def test_pgv_rules(message: dict[str, object], type_name: str, expected: list[str]) -> None:
    assert [str(v) for v in check(parse_message(message, type_name))] == expected


def test_every_example_passes() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        report = validate_path(path)
        assert report.ok and not report.warnings, report.lines()


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(NO_ADDRESS)
    assert main(["validate", str(EXAMPLES / "envoy-http-routes.yaml")]) == 0
    assert "OK, 4 resources" in capsys.readouterr().out
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:8: ClusterLoadAssignment 'echo'" in out and "1 error(s)" in out
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 1


def test_serve_reload_rejects_what_validate_rejects(tmp_path: Path) -> None:
    """The same loader: a reload that breaks a rule keeps the last good config."""
    cfg = tmp_path / "xds.yaml"
    cfg.write_text((EXAMPLES / "envoy-http-routes.yaml").read_text())
    source = FileSource(cfg)
    first = source.load_now()
    assert first is not None
    cfg.write_text(NO_ADDRESS)
    assert source.load_now() is None
    assert source.snapshot is first
    assert source.last_error is not None and "has no address" in str(source.last_error)
