"""The inbound handler's per-tunnel text: dial addresses and identities as str() gives them, without recomputing."""

from __future__ import annotations

import asyncio

import pytest

from hbone.identity.spiffe import SpiffeId
from hbone.proxy import inbound
from hbone.wire.authority import parse_authority


@pytest.mark.parametrize("text", ["10.0.0.1:80", "[2001:db8:0:0::1]:443", "[::ffff:10.0.0.1]:8080", "[::1]:9"])
def test_an_ip_target_dials_the_address_str_gives(text: str) -> None:
    target = parse_authority(text)
    assert asyncio.run(inbound.resolve_default(target)) == (str(target.ip), target.port)


def test_identity_text_is_str_and_follows_the_object() -> None:
    a, b = SpiffeId.parse("spiffe://td/ns/a/sa/x"), SpiffeId.parse("spiffe://td/ns/b/sa/y")
    assert inbound._text(a) == str(a) and inbound._text(a) == str(a)
    assert inbound._text(b) == str(b)
