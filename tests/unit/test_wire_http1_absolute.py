"""Absolute-form proxy requests (RFC 9112 §3.2.2) → the origin to open and the origin-form request to send."""

from __future__ import annotations

import pytest

from hbone.wire.http1 import Http1Error, Request, absolute_form


def _req(target: str, *headers: tuple[str, str]) -> Request:
    return Request("GET", target, "HTTP/1.1", headers)


@pytest.mark.parametrize(
    ("target", "authority", "origin", "host"),
    [
        (
            "http://web.ns.svc.cluster.local/a/b?x=1",
            "web.ns.svc.cluster.local:80",
            "/a/b?x=1",
            "web.ns.svc.cluster.local",
        ),
        ("http://10.0.0.1:8080", "10.0.0.1:8080", "/", "10.0.0.1:8080"),
        ("HTTP://h?q=2", "h:80", "/?q=2", "h"),
        ("http://[fd00::1]/", "[fd00::1]:80", "/", "[fd00::1]"),
    ],
)
def test_origin_and_host(target: str, authority: str, origin: str, host: str) -> None:
    dst, req = absolute_form(_req(target, ("Host", "stale"), ("Accept", "*/*")))
    assert str(dst) == authority
    assert req.target == origin
    assert req.headers == (("host", host), ("Accept", "*/*"))  # the URI's authority replaces Host (§3.2.2)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/just/a/path", "absolute URI"),
        ("https://h/", "use CONNECT"),
        ("http://user:pw@h/", "userinfo"),
        ("http:///x", "needs a host"),
        ("http://bad host/", "forbidden character"),
    ],
)
def test_refused(target: str, why: str) -> None:
    with pytest.raises(Exception, match=why) as info:
        absolute_form(_req(target))
    assert isinstance(info.value, Http1Error) or info.value.http_status == 400  # type: ignore[attr-defined]
