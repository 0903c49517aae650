"""The packet-capture rules `hbone capture print-rules` prints (pure: text in, text out; nothing is run).

REDIRECT (nat table): locally generated TCP is redirected to the outbound port, except the proxy's own marked
connections, loopback, excluded ports (HBONE 15008 by default) and excluded owners; optionally inbound TCP is
redirected to the plaintext inbound port. TPROXY (mangle table + a policy route to `lo`): the packets keep their
destination and are delivered to the IP_TRANSPARENT listener. Output is iptables/ip6tables commands or one nft
ruleset.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hbone.errors import ConfigError
from hbone.proxy.redirect import DEFAULT_MARK, INBOUND_PORT, OUTBOUND_PORT, CaptureMode

TPROXY_MARK = 0x111
TPROXY_TABLE = 133
MASK = 0xFFF


@dataclass(frozen=True)
class RuleOptions:
    mode: CaptureMode = CaptureMode.REDIRECT
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int | None = None  # None: no inbound capture
    include_cidrs: tuple[str, ...] = ()  # empty: everything but loopback
    exclude_ports: tuple[int, ...] = (15008,)
    mark: int = DEFAULT_MARK
    exclude_uids: tuple[int, ...] = ()
    ipv6: bool = True
    chain: str = "HBONE"

    def cidrs(self, version: int) -> list[str]:
        if not self.include_cidrs:
            return ["0.0.0.0/0" if version == 4 else "::/0"]
        out = []
        for text in self.include_cidrs:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as e:
                raise ConfigError(f"--include-cidr {text!r}: {e}") from e
            if net.version == version:
                out.append(str(net))
        return out


def iptables_rules(o: RuleOptions) -> list[str]:
    lines: list[str] = []
    for version, tool, loop in ((4, "iptables", "127.0.0.0/8"), (6, "ip6tables", "::1/128")):
        if version == 6 and not o.ipv6:
            continue
        cidrs = o.cidrs(version)
        if not cidrs:
            continue
        lines += (_redirect if o.mode is CaptureMode.REDIRECT else _tproxy)(o, tool, loop, cidrs, version)
    return lines


def _skips(o: RuleOptions, tool: str, table: str, chain: str, loop: str) -> list[str]:
    out = [f"{tool} -t {table} -A {chain} -m mark --mark 0x{o.mark:x}/0x{MASK:x} -j RETURN"]
    out += [f"{tool} -t {table} -A {chain} -m owner --uid-owner {uid} -j RETURN" for uid in o.exclude_uids]
    out.append(f"{tool} -t {table} -A {chain} -d {loop} -j RETURN")
    out += [f"{tool} -t {table} -A {chain} -p tcp --dport {p} -j RETURN" for p in o.exclude_ports]
    return out


def _redirect(o: RuleOptions, tool: str, loop: str, cidrs: list[str], version: int) -> list[str]:
    out_chain = f"{o.chain}_OUTPUT"
    lines = [f"{tool} -t nat -N {out_chain}", f"{tool} -t nat -A OUTPUT -p tcp -j {out_chain}"]
    lines += _skips(o, tool, "nat", out_chain, loop)
    lines += [f"{tool} -t nat -A {out_chain} -p tcp -d {c} -j REDIRECT --to-ports {o.outbound_port}" for c in cidrs]
    if o.inbound_port is not None:
        in_chain = f"{o.chain}_INBOUND"
        lines += [f"{tool} -t nat -N {in_chain}", f"{tool} -t nat -A PREROUTING -p tcp -j {in_chain}"]
        lines += [f"{tool} -t nat -A {in_chain} -p tcp --dport {p} -j RETURN" for p in o.exclude_ports]
        lines.append(f"{tool} -t nat -A {in_chain} -p tcp -j REDIRECT --to-ports {o.inbound_port}")
    return lines


def _tproxy(o: RuleOptions, tool: str, loop: str, cidrs: list[str], version: int) -> list[str]:
    ip = "ip" if version == 4 else "ip -6"
    local = "0.0.0.0/0" if version == 4 else "::/0"
    on_ip = "127.0.0.1" if version == 4 else "::1"
    mark = f"0x{TPROXY_MARK:x}/0x{MASK:x}"
    out_chain, div = f"{o.chain}_OUTPUT", f"{o.chain}_DIVERT"
    lines = [
        f"{ip} rule add fwmark {mark} lookup {TPROXY_TABLE}",
        f"{ip} route add local {local} dev lo table {TPROXY_TABLE}",
        f"{tool} -t mangle -N {div}",
        f"{tool} -t mangle -A {div} -j MARK --set-xmark {mark}",
        f"{tool} -t mangle -A {div} -j ACCEPT",
        f"{tool} -t mangle -A PREROUTING -p tcp -m socket --transparent -j {div}",
        # Locally generated connections are marked in OUTPUT, rerouted to lo and then caught in PREROUTING.
        f"{tool} -t mangle -N {out_chain}",
        f"{tool} -t mangle -A OUTPUT -p tcp -j {out_chain}",
    ]
    lines += _skips(o, tool, "mangle", out_chain, loop)
    lines += [f"{tool} -t mangle -A {out_chain} -p tcp -d {c} -j MARK --set-xmark {mark}" for c in cidrs]
    lines.append(
        f"{tool} -t mangle -A PREROUTING -i lo -p tcp -m mark --mark {mark} "
        f"-j TPROXY --on-ip {on_ip} --on-port {o.outbound_port} --tproxy-mark {mark}"
    )
    if o.inbound_port is not None:
        ports = _not_ports(o.exclude_ports)
        lines.append(
            f"{tool} -t mangle -A PREROUTING ! -i lo -p tcp{ports} "
            f"-j TPROXY --on-ip {on_ip} --on-port {o.inbound_port} --tproxy-mark {mark}"
        )
    return lines


def _not_ports(ports: tuple[int, ...]) -> str:
    """`! --dport P`, or multiport for several (iptables allows one negated --dport per rule)."""
    if not ports:
        return ""
    if len(ports) == 1:
        return f" ! --dport {ports[0]}"
    return f" -m multiport ! --dports {','.join(map(str, ports))}"


def nft_rules(o: RuleOptions) -> list[str]:
    """One `nft -f` ruleset (REDIRECT mode; TPROXY is printed for iptables only)."""
    if o.mode is not CaptureMode.REDIRECT:
        raise ConfigError("nft output is available for --mode redirect; use --format iptables for tproxy")
    skip = [
        f"    meta mark & 0x{MASK:x} == 0x{o.mark:x} return",
        *(f"    meta skuid {uid} return" for uid in o.exclude_uids),
        "    ip daddr 127.0.0.0/8 return",
        "    ip6 daddr ::1 return",
    ]
    if o.exclude_ports:
        skip.append(f"    tcp dport {{ {', '.join(map(str, o.exclude_ports))} }} return")
    redirect = [f"    ip daddr {c} tcp dport 1-65535 redirect to :{o.outbound_port}" for c in o.cidrs(4)]
    if o.ipv6:
        redirect += [f"    ip6 daddr {c} tcp dport 1-65535 redirect to :{o.outbound_port}" for c in o.cidrs(6)]
    lines = ["table inet hbone {", "  chain output {", "    type nat hook output priority -100;", *skip, *redirect]
    lines.append("  }")
    if o.inbound_port is not None:
        lines += ["  chain prerouting {", "    type nat hook prerouting priority -100;"]
        if o.exclude_ports:
            lines.append(f"    tcp dport {{ {', '.join(map(str, o.exclude_ports))} }} return")
        lines += [f"    meta l4proto tcp redirect to :{o.inbound_port}", "  }"]
    lines.append("}")
    return lines


__all__ = ["INBOUND_PORT", "OUTBOUND_PORT", "RuleOptions", "iptables_rules", "nft_rules"]
