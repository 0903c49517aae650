"""Authorities (`host:port`, `[v6]:port`) as a CONNECT `:authority`, x-tun or SOCKS target: parse, then the value
must print back to text that parses to the same value."""

from __future__ import annotations

from hbone.errors import HboneError
from hbone.wire.authority import Authority, check_hostname, parse_authority
from tests.fuzz.harness import Bytes, Harness, pack, text_of


def run(data: bytes) -> None:
    b = Bytes(data)
    flavour = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    text = text_of(b.rest(), flavour)
    if flavour & 2:
        check_hostname(text)
        return
    auth = parse_authority(text)
    again = parse_authority(str(auth))
    assert again == auth, (auth, again)
    assert Authority.from_parts(auth.ip or auth.host, auth.port) == auth


def seeds() -> dict[str, bytes]:
    texts = {
        "v4": "10.0.0.1:8080",
        "v6": "[fd00::1]:15008",
        "v6-zone": "[fe80::1%eth0]:80",
        "host": "reviews.default.svc.cluster.local:9080",
        "port0": "example.com:0",
        "port-big": "example.com:65536",
        "noport": "example.com",
        "empty": "",
        "colons": "::1:80",
        "unicode": "bücher.example:443",
        "leading-zero": "010.0.0.1:080",
        "trailing-dot": "example.com.:80",
    }
    out = {k: pack(b"\0", v.encode()) for k, v in texts.items()}
    out["hostname-check"] = pack(b"\2", b"a-b.c_d.example")
    return out


HARNESS = Harness("authority", run, (HboneError,), seeds, max_len=512)
