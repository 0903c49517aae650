"""File config source: examples load, errors carry file:line, directory union, atomic reload, watching."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from microxds import resources
from microxds.errors import ConfigError, ConfigErrors, DuplicateResourceError, UnknownTypeError
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.files import FileSource, config_files, load, watch
from microxds.sources.yamlconfig import parse_texts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CLUSTER = """\
resources:
  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: {name}
    type: STATIC
    connect_timeout: 1s
"""


def parse(text: str, name: str = "cfg.yaml") -> ConfigSnapshot:
    return parse_texts([(name, textwrap.dedent(text))])


def error_of(text: str, name: str = "cfg.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, name)
    return info.value


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_loads(example: str) -> None:
    snap = load(EXAMPLES / example)
    assert snap.count() > 0
    assert snap.files == (str(EXAMPLES / example),)
    for by_name in snap.resources.values():
        for name, res in by_name.items():
            assert res.name == name and res.value and res.version


def test_example_contents() -> None:
    grpc = load(EXAMPLES / "grpc-proxyless.yaml")
    assert set(grpc.resources[resources.LISTENER]) == {"echo"}
    assert set(grpc.resources[resources.ENDPOINT]) == {"echo-eds"}
    ambient = load(EXAMPLES / "ambient.yaml")
    addrs = ambient.resources[resources.ADDRESS]
    assert set(addrs) == {
        "Kubernetes//Pod/default/alice",
        "Kubernetes//Pod/default/bob",
        "default/echo.default.svc.cluster.local",
    }
    assert addrs["Kubernetes//Pod/default/alice"].aliases == ("/127.0.0.2",)
    tcp = load(EXAMPLES / "envoy-tcp-proxy.yaml")
    listener = tcp.resources[resources.LISTENER]["tcp-10000"]
    assert b"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" in listener.value


def test_yaml_syntax_error_has_line() -> None:
    err = error_of("resources:\n  - name: [a, b\n  - x: 1\n", "bad.yaml")
    assert err.file == "bad.yaml" and err.line == 3
    assert str(err).startswith("bad.yaml:3: YAML syntax error")


def test_unknown_type_points_at_type_line() -> None:
    err = error_of(
        """\
        resources:
          - "@type": type.googleapis.com/envoy.config.cluster.v3.Clustr
            name: x
        """
    )
    assert isinstance(err, UnknownTypeError)
    assert (err.file, err.line) == ("cfg.yaml", 2)
    assert "envoy.config.cluster.v3.Clustr" in str(err)


def test_unknown_nested_type_is_rejected() -> None:
    err = error_of(
        """\
        resources:
          - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
            name: l
            filter_chains:
              - filters:
                  - name: f
                    typed_config: {"@type": type.googleapis.com/envoy.nope.v3.Nope}
        """
    )
    assert isinstance(err, UnknownTypeError) and err.line == 2


def test_bad_field_points_at_the_field() -> None:
    err = error_of(
        """\
        resources:
          - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
            name: x
            eds_cluster_config:
              service_name: y
              sevice_nam: z
        """
    )
    assert err.line == 6, err
    assert "sevice_nam" in err.reason and "Available Fields" not in err.reason


def test_bad_value_points_at_the_field() -> None:
    err = error_of(
        """\
        resources:
          - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
            name: x
            lb_policy: FASTEST
        """
    )
    assert err.line == 4, err
    assert "FASTEST" in err.reason


def test_duplicate_name_rejected_with_both_locations() -> None:
    text = CLUSTER.format(name="a") + CLUSTER.format(name="a").removeprefix("resources:\n")
    err = error_of(text)
    assert isinstance(err, DuplicateResourceError)
    assert err.line == 6 and "first defined at cfg.yaml:2" in err.reason


def test_missing_name_rejected() -> None:
    err = error_of(
        """\
        resources:
          - "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
            endpoints: []
        """
    )
    assert err.line == 2 and "cluster_name" in err.reason


def test_missing_type_and_unknown_top_key() -> None:
    assert error_of("resources:\n  - name: x\n").line == 2
    err = error_of("resorces: []\n")
    assert err.line == 1 and "resorces" in err.reason


def test_several_errors_reported_together() -> None:
    text = 'resources:\n  - name: x\n  - "@type": type.googleapis.com/nope.Nope\n'
    err = error_of(text)
    assert isinstance(err, ConfigErrors)
    assert [(e.line) for e in err.errors] == [2, 3]
    assert str(err).splitlines()[0].startswith("cfg.yaml:2:")


def test_json_file_and_istio_type_in_proto_json() -> None:
    doc = {
        "resources": [
            {
                "@type": "type.googleapis.com/istio.security.Authorization",
                "name": "allow-nothing",
                "namespace": "default",
                "scope": "NAMESPACE",
            },
            {
                "@type": "type.googleapis.com/istio.workload.Address",
                "workload": {"uid": "w1", "name": "w", "addresses": ["fwAAAQ=="]},
            },
        ]
    }
    snap = parse(json.dumps(doc, indent=1), "cfg.json")
    assert set(snap.resources[resources.AUTHORIZATION]) == {"default/allow-nothing"}
    assert snap.resources[resources.ADDRESS]["w1"].aliases == ("/127.0.0.1",)


def test_directory_union_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(CLUSTER.format(name="b"))
    (tmp_path / "a.yml").write_text(CLUSTER.format(name="a"))
    (tmp_path / "c.json").write_text(json.dumps({"resources": []}))
    (tmp_path / "notes.txt").write_text("not config")
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    assert [p.name for p in config_files(tmp_path)] == ["a.yml", "b.yaml", "c.json"]
    snap = load(tmp_path)
    assert list(snap.resources[resources.CLUSTER]) == ["a", "b"]
    assert snap.origin(resources.CLUSTER, "b") == f"{tmp_path / 'b.yaml'}:2"
    # The same name in two files of one directory is a duplicate.
    (tmp_path / "d.yaml").write_text(CLUSTER.format(name="a"))
    with pytest.raises(DuplicateResourceError) as info:
        load(tmp_path)
    assert info.value.file == str(tmp_path / "d.yaml")


def test_version_is_content_hash() -> None:
    a = parse(CLUSTER.format(name="a"))
    assert a.version == parse("# a comment\n" + CLUSTER.format(name="a"), "other.yaml").version
    assert a.version != parse(CLUSTER.format(name="b")).version
    assert a.type_version(resources.CLUSTER) != a.type_version(resources.LISTENER)


def test_node_groups() -> None:
    snap = parse(
        CLUSTER.format(name="common")
        + textwrap.dedent(
            """\
            groups:
              edge:
                resources:
                  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
                    name: common
                    type: STRICT_DNS
                  - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
                    name: edge-only
            """
        )
    )
    assert list(snap.for_group(None)[resources.CLUSTER]) == ["common"]
    assert list(snap.for_group("unknown")[resources.CLUSTER]) == ["common"]
    edge = snap.for_group("edge")[resources.CLUSTER]
    assert list(edge) == ["common", "edge-only"]
    assert edge["common"].version != snap.resources[resources.CLUSTER]["common"].version
    assert snap.origin(resources.CLUSTER, "edge-only", "edge") == "cfg.yaml:12"


def test_file_source_keeps_last_good(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CLUSTER.format(name="a"))
    src = FileSource(cfg)
    first = src.load_now()
    assert first is not None and src.last_error is None
    assert src.load_now() is None  # unchanged content: nothing new
    cfg.write_text(CLUSTER.format(name="a") + "  - {name: broken}\n")
    assert src.load_now() is None
    assert src.snapshot is first
    assert src.last_error is not None and src.last_error.line == 6
    cfg.write_text(CLUSTER.format(name="b"))
    second = src.load_now()
    assert second is not None and src.last_error is None and src.snapshot is second
    assert (src.reloads, src.rejected) == (2, 1)


def test_missing_path() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load("/nonexistent/config.yaml")


async def test_watch_picks_up_changes_and_skips_invalid(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CLUSTER.format(name="a"))
    seen: list[ConfigSnapshot] = []
    changed = asyncio.Event()

    def on_change(snap: ConfigSnapshot) -> None:
        seen.append(snap)
        changed.set()

    task = asyncio.create_task(watch(cfg, on_change, interval=0.01, debounce=0.01))
    try:
        await asyncio.wait_for(changed.wait(), 5)
        assert list(seen[-1].resources[resources.CLUSTER]) == ["a"]
        changed.clear()
        # An invalid edit is not delivered; the following valid one is.
        cfg.write_text("resources: [")
        cfg.write_text(CLUSTER.format(name="bb"))
        await asyncio.wait_for(changed.wait(), 5)
        assert list(seen[-1].resources[resources.CLUSTER]) == ["bb"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_file_source_run_reports_error_then_recovers(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CLUSTER.format(name="a"))
    src = FileSource(tmp_path, interval=0.01, debounce=0.01)
    assert src.load_now() is not None
    delivered: asyncio.Queue[ConfigSnapshot] = asyncio.Queue()

    async def on_change(snap: ConfigSnapshot) -> None:
        await delivered.put(snap)

    errors: asyncio.Queue[ConfigError] = asyncio.Queue()
    task = asyncio.create_task(src.run(on_change, errors.put_nowait))
    try:
        (tmp_path / "b.yaml").write_text("resources:\n  - name: x\n")
        err = await asyncio.wait_for(errors.get(), 5)
        assert err is src.last_error
        assert src.last_error.file == str(tmp_path / "b.yaml") and src.last_error.line == 2
        assert delivered.empty()
        (tmp_path / "b.yaml").write_text(CLUSTER.format(name="b"))
        snap = await asyncio.wait_for(delivered.get(), 5)
        assert list(snap.resources[resources.CLUSTER]) == ["a", "b"]
        assert src.last_error is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
