"""Pure parts of the front ends: route table, listener config, capture rules, ingress host lookup, egress rules."""

from __future__ import annotations

import ipaddress

import pytest

from hbone.commands.frontends_config import FrontendsConfig
from hbone.errors import ConfigError
from hbone.proxy.capture_rules import RuleOptions, iptables_rules, nft_rules
from hbone.proxy.egress import EgressRule, rule_from_dict
from hbone.proxy.ingress import lookup, parse_hosts
from hbone.proxy.ingress_h2 import forwardable, request_authority, strip_port
from hbone.proxy.redirect import CaptureMode
from hbone.proxy.routing import Action, Match, RouteDenied, RouteTable, host_matches, table_from_list
from hbone.wire.authority import Authority, parse_authority

A = parse_authority


def test_host_patterns() -> None:
    assert host_matches("*", "x.y")
    assert host_matches("*.svc.cluster.local", "a.ns.svc.cluster.local")
    assert not host_matches("*.svc.cluster.local", "svc.cluster.local")
    assert host_matches("exact.example", "exact.example") and not host_matches("exact.example", "a.exact.example")


def test_match_semantics() -> None:
    m = Match(hosts=("*.mesh",), cidrs=(ipaddress.ip_network("10.0.0.0/8"),), ports=(80,))
    assert m.matches(A("a.mesh:80")) and m.matches(A("10.1.2.3:80"))
    assert not m.matches(A("a.mesh:81")) and not m.matches(A("11.0.0.1:80")) and not m.matches(A("b.other:80"))
    assert Match().matches(A("[::1]:1"))


def test_table_first_match_default_and_rewrite() -> None:
    table = table_from_list(
        [
            {"name": "deny-smtp", "match": {"ports": [25]}, "action": "deny"},
            {"name": "mesh", "match": {"hosts": ["*.svc.cluster.local"]}, "via": "10.0.0.5:15008",
             "identities": ["spiffe://td/ns/gw/sa/gw"], "target": "{host}:{port}"},
            {"name": "lan", "match": {"cidrs": ["192.168.0.0/16"]}, "target": "127.0.0.1:{port}"},
        ],
        default="deny",
    )  # fmt: skip
    d = table.decide(A("web.ns.svc.cluster.local:80"))
    assert d.action is Action.HBONE and d.route.via is not None and d.route.via.address == A("10.0.0.5:15008")
    assert table.decide(A("192.168.1.1:22")).target == A("127.0.0.1:22")
    assert table.decide(A("192.168.1.1:22")).action is Action.DIRECT
    with pytest.raises(RouteDenied, match="deny-smtp"):
        table.decide(A("web.ns.svc.cluster.local:25"))
    with pytest.raises(RouteDenied, match="default"):
        table.decide(A("8.8.8.8:53"))
    assert RouteTable.via("127.0.0.1:15008").decide(A("x.y:1")).action is Action.HBONE


@pytest.mark.parametrize(
    "bad",
    [
        [{"action": "hbone"}],
        [{"via": "nope"}],
        [{"match": {"cidrs": ["10.0.0.0/33"]}}],
        [{"match": {"ports": [0]}}],
        [{"match": {"hosts": ["bad host"]}}],
        [{"unknown": 1}],
        [{"target": "{nothing}"}],
    ],
)
def test_bad_routes_fail_at_load(bad: list[dict[str, object]]) -> None:
    with pytest.raises(ConfigError):
        table_from_list(bad)


def test_frontends_config_listeners() -> None:
    cfg = FrontendsConfig.from_dict(
        {
            "certs": "/c",
            "dial_timeout": "2s",
            "default_route": "direct",
            "listeners": [
                {"type": "socks5"},
                {"type": "http-connect", "listen": "127.0.0.1:9", "users": {"u": "p"}},
                {"type": "ingress-tcp", "listen": "0.0.0.0:9000", "target": "db.ns:5432"},
                {
                    "type": "h2r-node",
                    "gateway": "gw:15441",
                    "gateway_identities": ["spiffe://td/ns/g/sa/g"],
                    "names": ["a"],
                },
            ],
        }
    )
    assert cfg.dial_timeout == 2.0 and cfg.listeners[0].port == 15080 and cfg.listeners[1].get("users") == {"u": "p"}
    assert cfg.listeners[3].listen is None
    assert cfg.routes.decide(A("1.2.3.4:5")).action is Action.DIRECT
    for bad in (
        {"listeners": [{"type": "nope"}]},
        {"listeners": [{"type": "socks5", "typo": 1}]},
        {"listeners": [{"type": "ingress-tcp", "listen": "0.0.0.0:1"}]},
        {"listeners": [{"type": "h2r-node"}]},
        {"listeners": [{"type": "h2r-node", "gateway": "gw:15441", "names": ["a"]}]},  # any gateway: refused
        {"listeners": [{"type": "ingress-tls-terminate"}]},
        {"lsteners": []},
    ):
        with pytest.raises(ConfigError):
            FrontendsConfig.from_dict(bad)


def test_capture_rules() -> None:
    rules = iptables_rules(RuleOptions(include_cidrs=("10.0.0.0/8",), inbound_port=15006, exclude_uids=(1337,)))
    assert "iptables -t nat -A HBONE_OUTPUT -p tcp -d 10.0.0.0/8 -j REDIRECT --to-ports 15001" in rules
    assert "iptables -t nat -A HBONE_OUTPUT -m owner --uid-owner 1337 -j RETURN" in rules
    assert "iptables -t nat -A HBONE_INBOUND -p tcp -j REDIRECT --to-ports 15006" in rules
    assert not any(r.startswith("ip6tables") for r in rules)  # no v6 CIDR given
    tproxy = iptables_rules(RuleOptions(mode=CaptureMode.TPROXY))
    assert any("TPROXY --on-ip ::1 --on-port 15001" in r for r in tproxy)
    assert "ip rule add fwmark 0x111/0xfff lookup 133" in tproxy
    nft = "\n".join(nft_rules(RuleOptions()))
    assert "redirect to :15001" in nft and "meta mark & 0xfff == 0x539 return" in nft
    with pytest.raises(ConfigError):
        nft_rules(RuleOptions(mode=CaptureMode.TPROXY))


def test_ingress_host_lookup_and_sniffing() -> None:
    hosts = parse_hosts({"shop.example.com": "shop.ns:80", "*.example.com": "any.ns:80", "*": "fallback.ns:80"})
    assert lookup(hosts, "SHOP.example.com.") == A("shop.ns:80")
    assert lookup(hosts, "a.example.com") == A("any.ns:80") and lookup(hosts, "x.org") == A("fallback.ns:80")
    assert strip_port("shop.example.com:8080") == "shop.example.com" and strip_port("[fd00::1]:80") == "fd00::1"
    assert request_authority([(b":authority", b"h2.example:443"), (b"host", b"other")]) == "h2.example"
    assert request_authority([(b"host", b"h1.example")]) == "h1.example" and request_authority([]) is None
    kept = forwardable([(b"connection", b"x"), (b"te", b"trailers"), (b"te", b"gzip"), (b"x-a", b"1")])
    assert kept == [(b"te", b"trailers"), (b"x-a", b"1")]


def test_egress_rules_and_error_codes() -> None:
    rule = rule_from_dict(
        {"match": {"hosts": ["api.example"]}, "callers": ["spiffe://td/ns/ci/sa/*"], "tls": True}, "r"
    )
    assert isinstance(rule, EgressRule) and rule.tls is not None and rule.tls.verify
    assert rule.admits(SpiffeIdLike("spiffe://td/ns/ci/sa/build")) and not rule.admits(None)  # type: ignore[arg-type]
    assert Authority.from_parts("::1", 1).ip is not None


class SpiffeIdLike(str):
    """fnmatch works on the text form; a str stands in for SpiffeId."""


@pytest.mark.parametrize(
    "argv",
    [
        ["socks5", "--via", "127.0.0.1:15008", "--certs", "/c", "--user", "u:p"],
        ["http-proxy", "--listen", "127.0.0.1:9", "--direct"],
        ["sni-gateway", "--via", "10.0.0.1:15008", "--token-file", "/t", "--default-port", "8443"],
        ["egress", "--allow", "api.example.com:443", "--caller", "spiffe://td/ns/a/sa/*", "--tls"],
        ["double-hbone-gateway", "--service", "echo.ns.svc.cluster.local:80=10.0.0.7:15008"],
        ["ingress", "--listen", "0.0.0.0:9000", "--target", "db.ns:5432", "--via", "10.0.0.1:15008"],
        ["capture", "redirect", "--via", "10.0.0.1:15008"],
        ["capture", "tproxy", "--direct"],
        ["capture", "inbound", "--proxy-protocol"],
        ["h2r", "gateway", "--name", "bob.example=spiffe://td/ns/ns/sa/bob", "--hbone-listen", "0.0.0.0:15008"],
        ["h2r", "node", "--gateway", "gw.example:15441", "--gateway-identity", "spiffe://td/ns/g/sa/g", "--name", "x"],
    ],
)
def test_every_mode_is_a_subcommand_and_a_listener_type(argv: list[str]) -> None:
    from hbone.cli import build_parser
    from hbone.commands.frontends import config_from_args

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    assert len(cfg.listeners) == 1 and cfg.listeners[0].type == args.kind


def test_print_rules_command(capsys: pytest.CaptureFixture[str]) -> None:
    from hbone.cli import main

    assert main(["capture", "print-rules", "--format", "nft", "--inbound-port", "15006"]) == 0
    assert "redirect to :15006" in capsys.readouterr().out
