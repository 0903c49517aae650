"""The tunnel idle timeout as a setting: `tunnel_idle_timeout` in the serve, front-ends and agent configs
(default 1 h like Envoy's tcp_proxy and ztunnel; 0 turns it off; bad values are one-line errors)."""

from __future__ import annotations

import argparse

import pytest

from hbone.commands.frontends_config import FrontendsConfig
from hbone.commands.runtime import add_listener_flags, tunnel_idle_timeout
from hbone.config import ServeConfig
from hbone.errors import ConfigError
from hbone.net.relay import IDLE_TIMEOUT
from hbone.proxy.inbound import InboundConfig
from microxds.commands.agent import config_from_dict
from microxds.errors import ConfigError as XdsConfigError


def test_default_is_one_hour_everywhere() -> None:
    assert IDLE_TIMEOUT == 3600.0
    assert ServeConfig.from_dict({}).tunnel_idle_timeout == IDLE_TIMEOUT
    assert FrontendsConfig.from_dict({}).tunnel_idle_timeout == IDLE_TIMEOUT
    assert config_from_dict({"xds_address": "a:1"}).tunnel_idle_timeout == IDLE_TIMEOUT
    assert InboundConfig().idle_timeout == IDLE_TIMEOUT


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800.0), ("90s", 90.0), (0, None), ("0s", None)])
def test_durations_and_zero_means_never(text: str | int, seconds: float | None) -> None:
    assert ServeConfig.from_dict({"tunnel_idle_timeout": text}).tunnel_idle_timeout == seconds
    assert FrontendsConfig.from_dict({"tunnel_idle_timeout": text}).tunnel_idle_timeout == seconds
    raw = {"xds_address": "a:1", "tunnel_idle_timeout": text}
    assert config_from_dict(raw).tunnel_idle_timeout == seconds


def test_bad_values_are_errors() -> None:
    with pytest.raises(ConfigError, match="tunnel_idle_timeout"):
        ServeConfig.from_dict({"tunnel_idle_timeout": "soon"})
    with pytest.raises(ConfigError, match="tunnel_idle_timeout"):
        FrontendsConfig.from_dict({"tunnel_idle_timeout": "-5s"})
    with pytest.raises(XdsConfigError, match="tunnel_idle_timeout: invalid duration"):
        config_from_dict({"xds_address": "a:1", "tunnel_idle_timeout": "soon"})


def test_the_listener_flag_wins_over_the_config_file() -> None:
    parser = argparse.ArgumentParser()
    add_listener_flags(parser)
    assert tunnel_idle_timeout(parser.parse_args([])) == IDLE_TIMEOUT
    assert tunnel_idle_timeout(parser.parse_args([]), 60.0) == 60.0  # a config file's value stays
    assert tunnel_idle_timeout(parser.parse_args(["--tunnel-idle-timeout", "2m"]), 60.0) == 120.0
    assert tunnel_idle_timeout(parser.parse_args(["--tunnel-idle-timeout", "0"]), 60.0) is None
    with pytest.raises(ConfigError, match="--tunnel-idle-timeout"):
        tunnel_idle_timeout(parser.parse_args(["--tunnel-idle-timeout", "soon"]))
