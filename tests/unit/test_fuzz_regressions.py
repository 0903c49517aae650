"""Inputs that broke a parser's contract (an exception other than the package's own), found with the fuzz harnesses
in tests/fuzz/. Each input is also in that harness's corpus (`regression-*`), so CI replays it there too."""

from __future__ import annotations

from typing import Any

import pytest

from hbone.commands.frontends_config import FrontendsConfig, listener_from_dict
from hbone.config import ServeConfig
from hbone.configtext import parse_listen
from hbone.errors import ConfigError
from hbone.wire import http1
from microxds.errors import ConfigError as XdsConfigError
from microxds.sources.yamlconfig import parse_texts
from tests.fuzz.harness import CORPUS_DIR, load


def corpus_input(name: str, label: str) -> bytes:
    (path,) = (CORPUS_DIR / name).glob(f"regression-{label}-*")
    return path.read_bytes()


def test_content_length_with_a_non_ascii_digit_is_a_bad_request() -> None:
    """`Content-Length: ²` (byte 0xB2, Latin-1): str.isdigit() accepts it and int() raised ValueError."""
    reader = http1.MessageReader()
    with pytest.raises(http1.Http1Error, match="invalid Content-Length"):
        reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xb2\r\n\r\n")
    load("http1").one_input(corpus_input("http1", "content-length-superscript"))


@pytest.mark.parametrize(
    ("label", "text", "reason"),
    [
        (
            "policy-port-superscript",
            "policies:\n  - name: p\n    namespace: default\n    action: DENY\n"
            "    rules:\n      - to: [{ operation: { ports: ['\u00b2'] } }]\n",
            "is not a port number",
        ),
        (
            "address-prefix-superscript",
            "services:\n  - name: echo\n    namespace: default\n    addresses: ['10.96.0.0/\u00b2']\n"
            "    ports:\n      - { port: 80, targetPort: 8080 }\n",
            "bad prefix length",
        ),
    ],
)
def test_config_numbers_with_non_ascii_digits_are_config_errors(label: str, text: str, reason: str) -> None:
    """A port or prefix length written with a Unicode digit raised ValueError instead of a file:line error."""
    with pytest.raises(XdsConfigError, match=reason) as info:
        parse_texts([("mesh.yaml", text)])
    assert str(info.value).startswith("mesh.yaml:")
    load("xds_config").one_input(corpus_input("xds_config", label))


def test_listen_port_with_a_non_ascii_digit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad listen address"):
        parse_listen("127.0.0.1:\u00b2")
    load("hbone_config").one_input(corpus_input("hbone_config", "listen-superscript"))


def test_every_host_port_parser_refuses_non_ascii_digits() -> None:
    """The same mistake in the other HOST:PORT parsers (flags and config values): one-line ConfigErrors."""
    from hbone.commands.frontends import _allow_match
    from hbone.grpc.client import _split_target
    from microxds.bootstrap import BootstrapOptions
    from microxds.errors import ConfigError as MicroxdsConfigError
    from microxds.etcd.client import StoreURL

    with pytest.raises(ConfigError, match="bad server address"):
        _split_target("xds.example:\u00b2")
    with pytest.raises(MicroxdsConfigError, match="bad etcd endpoint"):
        StoreURL.parse("etcd://127.0.0.1:\u00b2/microxds")
    with pytest.raises(MicroxdsConfigError, match="bad --server"):
        BootstrapOptions(server="127.0.0.1:\u00b2").host_port()
    assert _allow_match(["api.example:\u00b2"])["ports"] == []  # not a port: the whole item is a host pattern


def test_a_type_url_never_imports_packages_outside_the_protobuf_roots() -> None:
    """Found while chasing a fuzz timeout in protoreg: `@type: type.googleapis.com/this.is.Zen` imported `this`
    (find_spec imports the parents of a dotted name). Type URLs come from config files and from xDS servers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from microxds.errors import UnknownTypeError\n"
        "from microxds.protoreg import message_class\n"
        "try:\n"
        "    message_class('type.googleapis.com/this.is.Zen')\n"
        "except UnknownTypeError:\n"
        "    pass\n"
        "print('this' in sys.modules, message_class('envoy.config.cluster.v3.Cluster').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False Cluster", out.stdout


def test_a_corrupt_wrapped_sotw_resource_is_nacked_not_raised() -> None:
    """xds_responses harness: a `Resource` wrapper whose bytes do not parse raised DecodeError out of
    `SotwSession.receive` (ending the client's stream); it is one rejected resource, the others still apply."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from microxds.client.state import SotwSession, SotwTypeState
    from microxds.resources import CLUSTER

    applied: list[str] = []

    class Handler:
        def apply(self, type_url: str, resources: Any, removed: Any) -> dict[str, str]:
            applied.extend(r.name for r in resources)
            return {}

    session = SotwSession(base_pb2.Node(id="n"), [SotwTypeState(CLUSTER)], Handler())
    session.start()
    resp = discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="1", nonce="1")
    resp.resources.add(type_url=CLUSTER, value=b"\x0a\x02c1")
    resp.resources.add(type_url="type.googleapis.com/envoy.service.discovery.v3.Resource", value=b"\x12\x04,\x02c2")
    nack = session.receive(resp)
    assert nack.HasField("error_detail") and nack.response_nonce == "1"
    assert applied == ["c1"]
    load("xds_responses").one_input(corpus_input("xds_responses", "corrupt-wrapped-resource"))


@pytest.mark.parametrize(
    "data",
    [{None: 1}, {"authorization": {None: "x"}}, {1: 2, "listen": None}],
    ids=["top", "authorization", "number"],
)
def test_config_keys_that_are_not_strings_are_config_errors(data: dict[object, object]) -> None:
    """`&policies:` (an anchor with no key) parses as a null key; sorting it with str keys raised TypeError."""
    with pytest.raises(ConfigError, match="unknown key"):
        ServeConfig.from_dict(data)
    with pytest.raises(ConfigError):
        FrontendsConfig.from_dict({None: 1})
    with pytest.raises(ConfigError):
        listener_from_dict({"type": "socks5", None: 1}, "listeners[0]")
    load("hbone_config").one_input(corpus_input("hbone_config", "null-key"))


@pytest.mark.parametrize(
    "text",
    [
        "routes:\n  - {name: lan, match: {cidrs: ['192.168.0.0/16']}, on: direct}\n",  # YAML 1.1: `on` is True
        "routes:\n  - {name: m, match: {hosts: [a], 1: x}, via: 10.0.0.5:15008}\n",
        "routes:\n  - {name: r, double_hbone: {gateway: 10.2.0.1:15008, null: x}}\n",
    ],
)
def test_non_string_keys_in_frontends_config_are_config_errors(text: str) -> None:
    """hbone_config harness: a key YAML reads as a boolean, number or null made `sorted()` of the unknown keys
    raise TypeError (str < bool) in the route, match and double_hbone parsers (and egress rules, below)."""
    from hbone.commands.frontends_config import FrontendsConfig
    from hbone.safeyaml import safe_load

    with pytest.raises(ConfigError, match="unknown key"):
        FrontendsConfig.from_dict(safe_load(text, "f.yaml"), "f.yaml")
    load("hbone_config").one_input(corpus_input("hbone_config", "boolean-route-key"))


def test_non_string_keys_in_an_egress_rule_are_config_errors() -> None:
    from hbone.proxy.egress import rule_from_dict

    with pytest.raises(ConfigError, match="unknown key"):
        rule_from_dict({"name": "gh", "match": {"hosts": ["a"]}, True: 1}, "allow[0]")
