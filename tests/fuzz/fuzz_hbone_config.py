"""`hbone serve --config` and `hbone frontends --config` files: YAML text through the bounded loader
(hbone.safeyaml: size, nesting, aliases) into a validated config object, or one one-line `ConfigError` that starts
with `fuzz.yaml` (and its line where the text has one)."""

from __future__ import annotations

from hbone.commands.frontends_config import FrontendsConfig
from hbone.config import ServeConfig
from hbone.configtext import Where
from hbone.errors import HboneError
from hbone.safeyaml import YamlLines, safe_load
from tests.fuzz.harness import Bytes, Harness, pack

SERVE = b"""listen: 0.0.0.0:15008
h2c_listen: 127.0.0.1:15009
certs: ./etc/certs
authorization:
  mode: policies
  policies:
    - name: allow-frontend
      namespace: shop
      action: ALLOW
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}], to: [{operation: {ports: ["80"]}}]}]
    - {name: deny-all, namespace: shop, action: DENY, rules: [{when: [{key: source.ip, values: ["10.0.0.0/8"]}]}]}
dial_timeout: 10s
drain_timeout: 500ms
http2: {max_concurrent_streams: 200, stream_window: 4194304, connection_window: 16777216, ping_interval: 10s}
"""

FRONTENDS = b"""certs: ./etc/certs
dial_timeout: 10s
mark: 0x539
default_route: deny
routes:
  - name: mesh
    match: {hosts: ["*.svc.cluster.local"], cidrs: ["10.0.0.0/8"], ports: [80]}
    via: 10.0.0.5:15008
    identities: [spiffe://cluster.local/ns/istio-system/sa/gw]
    target: "{host}:{port}"
  - {name: lan, match: {cidrs: ["192.168.0.0/16"]}, action: direct}
  - name: remote-net
    match: {hosts: ["*.remote.svc.cluster.local"]}
    double_hbone: {gateway: 10.2.0.1:15008, gateway_identities: [spiffe://cluster.local/ns/istio-system/sa/eastwest],
                   identities: [spiffe://cluster.local/ns/shop/sa/cart], network: net2}
listeners:
  - {type: socks5, listen: 127.0.0.1:15080, users: {alice: secret}}
  - {type: http-connect, listen: 127.0.0.1:15081}
  - {type: redirect, listen: 127.0.0.1:15001}
  - {type: inbound-plaintext, listen: 0.0.0.0:15006, proxy_protocol: true, capture: redirect}
  - {type: sni-gateway, listen: 0.0.0.0:15443, default_port: 443}
  - {type: double-hbone-gateway, listen: 0.0.0.0:15008, services: {"echo.ns.svc.cluster.local:80": "10.1.0.7:15008"}}
  - {type: egress, allow: [{name: gh, match: {hosts: [api.github.com], ports: [443]}, callers: ["spiffe://x/ns/ci/sa/*"]}]}
"""


def run(data: bytes) -> None:
    b = Bytes(data)
    opts = b.byte()
    b.sizes()  # the common layout (harness.pack); this parser is not incremental
    text = b.rest().decode("utf-8", "replace")
    value = safe_load(text, "fuzz.yaml")
    where = Where("fuzz.yaml", lines=YamlLines(text))  # errors look up their line in the same text
    try:
        if opts & 1:
            FrontendsConfig.from_dict(value, where)
        else:
            ServeConfig.from_dict(value, where)
    except HboneError as e:
        assert str(e).startswith("fuzz.yaml") and "\n" not in str(e), str(e)  # one line that says where
        raise


def seeds() -> dict[str, bytes]:
    return {
        "serve": pack(b"\0", SERVE),
        "frontends": pack(b"\1", FRONTENDS),
        "serve-json": pack(b"\0", b'{"listen": "[::1]:15008", "http2": {"ping_interval": null}}'),
        "alias": pack(b"\1", b"a: &x {k: v}\nroutes: [*x, *x]\n"),
        "deep": pack(b"\0", b"[" * 200 + b"]" * 200),
        "bad-duration": pack(b"\0", b"dial_timeout: 10 parsecs\n"),
    }


HARNESS = Harness("hbone_config", run, (HboneError,), seeds, max_len=8192)
