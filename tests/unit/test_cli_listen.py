"""One listen-address parser for both CLIs (`hbone.configtext.parse_listen`); `:PORT` means every interface."""

from __future__ import annotations

import pytest

from hbone.configtext import listen_host, parse_listen
from hbone.errors import ConfigError
from microxds.errors import ConfigError as MicroxdsConfigError
from microxds.server.app import parse_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:15080", "127.0.0.1", 15080),
        (":15010", "0.0.0.0", 15010),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:15008", "::1", 15008),
        ("localhost:8080", "localhost", 8080),
    ],
)
def test_forms(text: str, host: str, port: int) -> None:
    addr = parse_listen(text)
    assert (listen_host(addr), addr.port) == (host, port)
    assert parse_address(text) == (host, port)  # microxds' listeners go through the same function


def test_default_host_for_bare_port() -> None:
    assert parse_address(":0", "127.0.0.1") == ("127.0.0.1", 0)
    assert listen_host(parse_listen(":1", default_host="::1")) == "::1"


@pytest.mark.parametrize("text", ["127.0.0.1:", "15010", "host:port", "1.2.3.4:70000", "a b:1", ""])
def test_bad_forms_say_which_forms_work(text: str) -> None:
    with pytest.raises(ConfigError, match=r"use HOST:PORT, \[V6\]:PORT or :PORT"):
        parse_listen(text)
    with pytest.raises(MicroxdsConfigError, match="bad listen address"):
        parse_address(text)
