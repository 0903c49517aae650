"""hbone.configtext: the one parser of durations, sizes, addresses and key sets, with `file:line` in every error."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from hbone.commands.frontends_config import load_frontends_config
from hbone.config import load_serve_config
from hbone.configtext import (
    TextError,
    Where,
    arg_type,
    check_keys,
    duration_text,
    int_text,
    listen_text,
    parse_size,
    size_text,
    target_text,
)
from hbone.errors import ConfigError
from hbone.safeyaml import YamlLines
from tests.configfiles import load_error


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10.0), ("250ms", 0.25), ("1m30s", 90.0), ("2h", 7200.0), ("7d", 604800.0), ("1h30m15s", 5415.0),
        ("1.5s", 1.5), (".5s", 0.5), ("100us", 1e-4), ("100µs", 1e-4), ("10ns", 1e-8), (" 10s ", 10.0),
        ("10", 10.0), ("0.5", 0.5), (10, 10.0), (0.25, 0.25), (0, 0.0), ("0", 0.0), ("0s", 0.0),
    ],
)  # fmt: skip
def test_durations(value: Any, seconds: float) -> None:
    assert duration_text(value) == pytest.approx(seconds)


BAD_DURATIONS = [
    ("10x", "invalid duration '10x': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("", "invalid duration '': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("s", "invalid duration 's': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("1 s", "invalid duration '1 s': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("inf", "invalid duration 'inf': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("nan", "invalid duration 'nan': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("1e3", "invalid duration '1e3': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("10S", "invalid duration '10S': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ("-1s", "duration '-1s' is negative"),
    ("-5", "duration '-5' is negative"),
    (-1, "duration -1 is negative"),
    (float("nan"), "invalid duration nan: use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    (float("inf"), "duration inf is longer than 100 years"),
    ("36501d", "duration '36501d' is longer than 100 years"),
    (True, "expected a duration, got True; use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    (None, "expected a duration, got None; use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
    ([1], "expected a duration, got [1]; use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of seconds"),
]


@pytest.mark.parametrize(("value", "message"), BAD_DURATIONS)
def test_bad_durations(value: Any, message: str) -> None:
    with pytest.raises(TextError) as info:
        duration_text(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (65536, 65536), ("65536", 65536), ("64KiB", 65536), ("1MiB", 1 << 20), ("4Gi", 4 << 30), ("1 MiB", 1 << 20),
        ("1.5KiB", 1536), ("10B", 10), ("1kB", 1000), ("2MB", 2_000_000), ("0", 0), ("0.5MiB", 1 << 19),
    ],
)  # fmt: skip
def test_sizes(value: Any, size: int) -> None:
    assert size_text(value) == size


BAD_SIZES = [
    ("64kib", "invalid size '64kib': unknown unit 'kib' (did you mean KiB?); use e.g. 65536, 64KiB or 1MiB"),
    ("1XB", "invalid size '1XB': unknown unit 'XB'; use e.g. 65536, 64KiB or 1MiB"),
    ("MiB", "invalid size 'MiB': use e.g. 65536, 64KiB or 1MiB"),
    ("1.3B", "size '1.3B' is not a whole number of bytes"),
    ("-1KiB", "size '-1KiB' is negative"),
    (-1, "size -1 is negative"),
    (1.5, "expected a size, got 1.5; use e.g. 65536, 64KiB or 1MiB"),
    (False, "expected a size, got False; use e.g. 65536, 64KiB or 1MiB"),
    ("1" * 5000 + "KiB", "size '11111111111111111111'... is too large"),
]


@pytest.mark.parametrize(("value", "message"), BAD_SIZES)
def test_bad_sizes(value: Any, message: str) -> None:
    with pytest.raises(TextError) as info:
        size_text(value)
    assert str(info.value) == message


def test_size_range_names_the_place() -> None:
    with pytest.raises(ConfigError) as info:
        parse_size("2MiB", Where("f.yaml", ("http2", "max_frame_size")), maximum=1 << 20)
    assert str(info.value) == "f.yaml: http2.max_frame_size: size '2MiB' is out of range: must be at least 0 and " \
        "at most 1,048,576 bytes"  # fmt: skip


def test_ints() -> None:
    assert [int_text(v) for v in (5, "5", "0x539", "0o17", " 12 ")] == [5, 5, 0x539, 15, 12]
    for bad, message in ((True, "expected an integer, got True"), ("1.0", "expected an integer, got '1.0'")):
        with pytest.raises(TextError, match=f"^{message}$"):
            int_text(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "bad listen address 'localhost': use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)"),
        ("1.2.3.4:70000", "bad listen address '1.2.3.4:70000': use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)"),
        ("::1:80", "bad listen address '::1:80': authority '::1:80': an IPv6 address must be in brackets, as "
                   "[addr]:port; use HOST:PORT, [V6]:PORT or :PORT"),
        (15008, "bad listen address 15008: use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)"),
    ],
)  # fmt: skip
def test_bad_listen_addresses(text: Any, message: str) -> None:
    with pytest.raises(TextError) as info:
        listen_text(text)
    assert str(info.value) == message


def test_targets() -> None:
    assert str(target_text("[::1]:8080")) == "[::1]:8080"
    assert str(target_text("Echo.NS:80")) == "echo.ns:80"
    for text, message in (
        ("echo.ns", "authority 'echo.ns' has no port; expected host:port"),
        ("a:0", "authority 'a:0': port 0 is out of range 1..65535"),
        (None, "bad address None: use HOST:PORT or [V6]:PORT"),
    ):
        with pytest.raises(TextError) as info:
            target_text(text)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pign_interval": 1}, "x.yaml: http2: unknown key 'pign_interval' (did you mean 'ping_interval'?)"),
        ({"bogus": 1}, "x.yaml: http2: unknown key 'bogus'; known: ping_interval, ping_timeout"),
        ({"b": 1, "ping_timout": 2}, "x.yaml: http2: unknown keys 'b', 'ping_timout' (did you mean 'ping_timeout'?); "
                                     "known: ping_interval, ping_timeout"),
        ({None: 1, 3: 2}, "x.yaml: http2: unknown keys '3', 'None'; known: ping_interval, ping_timeout"),
    ],
)  # fmt: skip
def test_unknown_keys(data: dict[Any, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_keys(data, ("ping_interval", "ping_timeout"), Where("x.yaml", ("http2",)))
    assert str(info.value) == message


def test_where_renders_file_line_and_path() -> None:
    text = "a: 1\nlisteners:\n  - {type: x}\n  - type: y\n    listen: bad\n"
    at = Where("f.yaml", lines=YamlLines(text))
    assert str(at / "listeners" / 1 / "listen") == "f.yaml:5: listeners[1].listen"
    assert str(at / "listeners" / 0 / "nope") == "f.yaml:3: listeners[0].nope"  # nearest ancestor's line
    assert str(Where("--ttl")) == "--ttl"
    broken = Where("g.yaml", ("a",), YamlLines("a: [\n"))
    assert str(broken) == "g.yaml: a"  # unparseable text: no line rather than a wrong one
    with pytest.raises(ConfigError, match=r"^f\.yaml:3: listeners: two lines$") as info:
        raise (at / "listeners").error("two\nlines")
    assert "\n" not in str(info.value)


def test_flag_type_gives_argparse_one_line() -> None:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    parser.add_argument("--ttl", type=arg_type(duration_text, "duration"))
    assert parser.parse_args(["--ttl", "1m30s"]).ttl == 90.0
    with pytest.raises(argparse.ArgumentError, match=r"invalid duration '1y': use e\.g\. 250ms"):
        parser.parse_args(["--ttl", "1y"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: 0.0.0.0:15008\nhttp2:\n  ping_interval: 10s\n  pign_timeout: 5s\n",
         "{f}:4: http2: unknown key 'pign_timeout' (did you mean 'ping_timeout'?)"),
        ("http2:\n  ping_interval: 10x\n",
         "{f}:2: http2.ping_interval: invalid duration '10x': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a number of "
         "seconds"),
        ("limits: {max_connections: 0}\n", "{f}:1: limits.max_connections: 0 is out of range: must be at least 1"),
        ("\n\nh2c_listen: localhost\n",
         "{f}:3: h2c_listen: bad listen address 'localhost': use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)"),
        ("http2: {stream_window: 1MB0}\n",
         "{f}:1: http2.stream_window: invalid size '1MB0': use e.g. 65536, 64KiB or 1MiB"),
        ("authorisation: {}\n", "{f}:1: unknown key 'authorisation' (did you mean 'authorization'?)"),
    ],
)  # fmt: skip
def test_serve_config_errors_have_file_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "serve.yaml"
    assert load_error(load_serve_config, path, text) == message.format(f=path)


def test_serve_config_takes_sizes_and_compound_durations(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("http2: {stream_window: 4MiB, ping_interval: 1m30s}\nlimits: {grpc_connection_bytes: 32MiB}\n")
    cfg = load_serve_config(path)
    assert (cfg.h2.initial_stream_window, cfg.h2.ping_interval) == (4 << 20, 90.0)
    assert cfg.limits.grpc_connection_bytes == 32 << 20


def test_frontends_config_errors_have_file_line(tmp_path: Path) -> None:
    path = tmp_path / "fe.yaml"
    text = "listeners:\n  - {type: socks5}\n  - type: ingress-tcp\n    listen: :9000\n    target: db\n"
    assert load_error(load_frontends_config, path, text) == (
        f"{path}:5: listeners[1].target: authority 'db' has no port; expected host:port"
    )
    text = "listeners:\n  - type: http-connect\n    usres: {a: b}\n"
    assert load_error(load_frontends_config, path, text) == (
        f"{path}:3: listeners[0]: unknown key 'usres' (did you mean 'users'?) for listener type http-connect"
    )


def test_microxds_configs_name_the_close_key_at_its_line() -> None:
    from microxds.errors import ConfigError as XdsConfigError
    from microxds.sources.yamlconfig import parse_texts

    with pytest.raises(XdsConfigError) as info:
        parse_texts([("mesh.yaml", "workloads: []\nservice: []\n")])
    assert str(info.value) == "mesh.yaml:2: unknown top-level key 'service' (did you mean 'services'?)"
    text = "workloads:\n  - name: a\n    namespace: ns\n    adresses: [10.0.0.1]\n"
    with pytest.raises(XdsConfigError) as info:
        parse_texts([("w.yaml", text)])
    assert str(info.value) == "w.yaml:4: unknown workload field 'adresses' (did you mean 'addresses'?)"


def test_cli_flags_take_durations_and_sizes() -> None:
    from hbone.cli import build_parser as hbone_parser
    from microxds.cli import build_parser as microxds_parser

    args = hbone_parser().parse_args(["grpc", "call", "127.0.0.1:1", "/s/M", "--timeout", "1m30s",
                                      "--max-message-size", "4MiB"])  # fmt: skip
    assert (args.timeout, args.max_message_size) == (90.0, 4 << 20)
    args = microxds_parser().parse_args(["serve", "--config", "x", "--debounce-quiet", "250ms", "--ca-max-ttl", "30d"])
    assert (args.debounce_quiet, args.ca_max_ttl) == (0.25, 30 * 86400.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listeners:\n  - type: ingress-http\n    request_timeout: 15\n    hosts: {}\n  - type: ingress-http\n"
         "    request_timeout: soon\n",
         "{f}:6: listeners[1].request_timeout: invalid duration 'soon': use e.g. 250ms, 10s, 1m30s, 2h, 7d or a "
         "number of seconds"),
        ("listeners:\n  - {type: sni-gateway, default_port: 0}\n",
         "{f}:2: listeners[0].default_port: 0 is out of range: must be at least 1 and at most 65535"),
        ("listeners:\n  - {type: inbound-plaintext, proxy_protocol: yes please}\n",
         "{f}:2: listeners[0].proxy_protocol: expected true or false, got 'yes please'"),
        ("routes:\n  - name: mesh\n    match: {hosts: ['*.svc']}\n    via: 10.0.0.5\n",
         "{f}:4: routes[0].via: authority '10.0.0.5' has no port; expected host:port"),
        ("routes:\n  - match:\n      ports: [80, 99999]\n    action: direct\n",
         "{f}:3: routes[0].match.ports[1]: 99999 is out of range: must be at least 1 and at most 65535"),
        ("routes:\n  - {action: direct, mach: {hosts: [a]}}\n",
         "{f}:2: routes[0]: unknown key 'mach' (did you mean 'match'?)"),
    ],
)  # fmt: skip
def test_frontends_values_fail_at_load_with_their_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "fe.yaml"
    assert load_error(load_frontends_config, path, text) == message.format(f=path)


def test_admin_port_keys_have_file_line(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    assert load_error(load_serve_config, path, "listen: :0\nmetrics: localhost\n") == (
        f"{path}:2: metrics: bad listen address 'localhost': use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one), "
        "or off"
    )


def test_port_mark_and_uid_flags() -> None:
    from hbone.cli import build_parser as hbone_parser

    args = hbone_parser().parse_args(["capture", "print-rules", "--mark", "0x539", "--exclude-port", "15008"])
    assert (args.mark, args.exclude_port) == (0x539, [15008])
    for flag, value in (("--outbound-port", "0"), ("--inbound-port", "65536"), ("--exclude-uid", "-1")):
        with pytest.raises(SystemExit):
            hbone_parser().parse_args(["capture", "print-rules", flag, value])
