"""`hbone serve` configuration: a YAML file, overridden by command-line flags.

```yaml
listen: 0.0.0.0:15008          # mTLS HBONE (null to disable)
h2c_listen: 127.0.0.1:15009    # plaintext HBONE, trusted networks only (default off)
certs: ./etc/certs             # Istio or SPIFFE layout
authorization:
  mode: same-namespace         # same-namespace (default) | allow-all | policies
  policies:                    # AuthorizationPolicy-like, converted as istiod does; added to the mode's default
    - name: allow-frontend
      namespace: shop
      action: ALLOW
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]
dial_timeout: 10s
tunnel_idle_timeout: 1h          # an established tunnel with no byte either way for this long is closed (0: never)
drain_timeout: 5s
http2: {max_concurrent_streams: 200, stream_window: 4194304, connection_window: 16777216, ping_interval: 10s,
        max_resets_per_second: 100, max_control_frames_per_second: 1000, max_outbound_buffer: 1048576,
        preface_timeout: 10s, idle_timeout: 1h}
limits: {handshake_timeout: 10s, max_connections: 8192, max_tunnels: 16384, max_pending_dials: 1024,
         grpc_connection_bytes: 67108864, grpc_process_bytes: 268435456}
```
Unknown keys are errors, so a typo never silently changes behaviour. Authorization never widens silently: listing
policies keeps the default mode's policy (same trust domain and namespace); Istio's policies-only semantics need an
explicit `mode: policies`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hbone.admin.options import KEYS as ADMIN_KEYS
from hbone.admin.options import config_keys as admin_config_keys
from hbone.authz.config import policy_from_dict
from hbone.authz.defaults import DefaultMode, default_policies
from hbone.authz.model import Policy
from hbone.configtext import (
    Where,
    check_keys,
    mapping,
    parse_duration,
    parse_idle_timeout,
    parse_int,
    parse_listen,
    parse_size,
    where_of,
)
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId
from hbone.net.relay import IDLE_TIMEOUT
from hbone.net.settings import H2Settings
from hbone.safeyaml import YamlLines, read_limited, safe_load
from hbone.wire.authority import Authority, parse_authority

_TOP = (
    "listen",
    "h2c_listen",
    "certs",
    "authorization",
    "dial_timeout",
    "tunnel_idle_timeout",
    "drain_timeout",
    "http2",
    "limits",
    *ADMIN_KEYS,
)
_H2 = {
    "max_concurrent_streams": "max_concurrent_streams",
    "stream_window": "initial_stream_window",
    "connection_window": "connection_window",
    "max_frame_size": "max_frame_size",
    "max_header_list_size": "max_header_list_size",
    "ping_interval": "ping_interval",
    "ping_timeout": "ping_timeout",
    "max_resets_per_second": "max_resets_per_second",
    "max_pending_streams": "max_pending_streams",
    "max_control_frames_per_second": "max_control_frames_per_second",
    "max_outbound_buffer": "max_outbound_buffer",
    "preface_timeout": "preface_timeout",
    "idle_timeout": "idle_timeout",
}
_DURATIONS = ("ping_interval", "ping_timeout", "preface_timeout", "idle_timeout")
#: Byte quantities: a number or a size with a unit (`64KiB`, `16MiB`).
_H2_SIZES = ("stream_window", "connection_window", "max_frame_size", "max_header_list_size", "max_outbound_buffer")


_LIMIT_INTS = ("max_connections", "max_tunnels", "max_pending_dials")
_LIMIT_SIZES = ("grpc_connection_bytes", "grpc_process_bytes")


@dataclass
class ProcessLimits:
    """Per-process caps of `hbone serve` (README "Security and robustness")."""

    handshake_timeout: float = 10.0
    max_connections: int = 8192
    max_tunnels: int = 16_384
    max_pending_dials: int = 1_024
    grpc_connection_bytes: int = 64 * 1024 * 1024
    grpc_process_bytes: int = 256 * 1024 * 1024

    def update(self, data: Any, where: str | Where) -> None:
        if data is None:
            return
        at = where_of(where)
        check_keys(mapping(data, at), ("handshake_timeout", *_LIMIT_INTS, *_LIMIT_SIZES), at)
        for key, value in data.items():
            if key == "handshake_timeout":
                self.handshake_timeout = parse_duration(value, at / key)
                if self.handshake_timeout <= 0:
                    raise (at / key).error("must be positive")
            elif key in _LIMIT_SIZES:
                setattr(self, key, parse_size(value, at / key, minimum=1))
            else:
                setattr(self, key, parse_int(value, at / key, minimum=1))


class ProxyKeys(Protocol):
    """The settings `hbone serve` and the front ends share (`read_proxy_keys`)."""

    certs: Path | None
    dial_timeout: float
    tunnel_idle_timeout: float | None


def read_proxy_keys(cfg: ProxyKeys, data: Mapping[str, Any], at: Where) -> None:
    """Set `certs`, `dial_timeout` and `tunnel_idle_timeout` on `cfg` from the keys present in `data`."""
    if data.get("certs") is not None:
        cfg.certs = Path(str(data["certs"]))
    if "dial_timeout" in data:
        cfg.dial_timeout = parse_duration(data["dial_timeout"], at / "dial_timeout")
    if "tunnel_idle_timeout" in data:
        cfg.tunnel_idle_timeout = parse_idle_timeout(data["tunnel_idle_timeout"], at / "tunnel_idle_timeout")


def _address(value: Any, where: Where) -> Authority | None:
    return None if value is None else parse_listen(value, where)


@dataclass
class ServeConfig:
    listen: Authority | None = field(default_factory=lambda: parse_authority("0.0.0.0:15008"))
    h2c_listen: Authority | None = None
    certs: Path | None = None
    mode: DefaultMode = DefaultMode.SAME_NAMESPACE
    policies: tuple[Policy, ...] = ()
    dial_timeout: float = 10.0
    tunnel_idle_timeout: float | None = IDLE_TIMEOUT
    drain_timeout: float = 5.0
    h2: H2Settings = field(default_factory=H2Settings.server)
    limits: ProcessLimits = field(default_factory=ProcessLimits)
    admin_ports: dict[str, str] = field(default_factory=dict)  # admin/metrics/readiness keys as written

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str | Where = "config") -> ServeConfig:
        """Build from a parsed file; `source` names it (a `Where` with the text's lines gives `file:LINE`)."""
        cfg = cls()
        if data is None:
            return cfg
        at = where_of(source)
        check_keys(mapping(data, at, "a mapping at the top level"), _TOP, at)
        if "listen" in data:
            cfg.listen = _address(data["listen"], at / "listen")
        if "h2c_listen" in data:
            cfg.h2c_listen = _address(data["h2c_listen"], at / "h2c_listen")
        read_proxy_keys(cfg, data, at)
        if "drain_timeout" in data:
            cfg.drain_timeout = parse_duration(data["drain_timeout"], at / "drain_timeout")
        cfg.admin_ports = admin_config_keys(data, at)
        cfg._authz(data.get("authorization"), at / "authorization")
        cfg._http2(data.get("http2"), at / "http2")
        cfg.limits.update(data.get("limits"), at / "limits")
        return cfg

    def _authz(self, data: Any, at: Where) -> None:
        if data is None:
            return
        check_keys(mapping(data, at, "a mapping with mode and/or policies"), ("mode", "policies"), at)
        if "mode" in data:
            try:
                self.mode = DefaultMode.parse(str(data["mode"]))
            except ConfigError as e:
                raise (at / "mode").error(str(e)) from None
        raw = data.get("policies") or []
        if not isinstance(raw, list):
            raise (at / "policies").error(f"expected a list, got {raw!r}"[:120])
        policies = []
        for i, item in enumerate(raw):
            try:
                policies.append(policy_from_dict(item))
            except ConfigError as e:
                raise (at / "policies" / i).error(str(e)) from None
        self.policies = tuple(policies)
        # No `mode:` keeps the default whatever policies are listed: one DENY must never let everyone else in.

    def effective_policies(self, identity: SpiffeId | None) -> tuple[Policy, ...]:
        """The policies enforced for a server with `identity`: the mode's built-in policy, then the listed ones."""
        if self.mode is DefaultMode.POLICIES:
            return self.policies
        if identity is not None:
            return default_policies(self.mode, identity) + self.policies
        if self.mode is DefaultMode.SAME_NAMESPACE:
            raise ConfigError(
                "same-namespace authorization needs an identity: give --certs or choose --authz allow-all"
            )
        return self.policies

    def authz_summary(self, identity: SpiffeId | None) -> dict[str, Any]:
        """What is enforced, for the start line and a config dump: the effective mode and the policy names."""
        return {"mode": self.mode.value, "policies": [p.name for p in self.effective_policies(identity)]}

    def _http2(self, data: Any, at: Where) -> None:
        if data is None:
            return
        check_keys(mapping(data, at), _H2, at)
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key in _DURATIONS:
                changes[_H2[key]] = None if value is None else parse_duration(value, at / key)
            elif value is None and key == "max_pending_streams":
                changes[_H2[key]] = None
            elif key in _H2_SIZES:
                changes[_H2[key]] = parse_size(value, at / key)
            else:
                changes[_H2[key]] = parse_int(value, at / key)
        try:
            self.h2 = self.h2.replace(**changes)
        except ConfigError as e:
            raise at.error(str(e)) from None


def load_serve_config(path: Path) -> ServeConfig:
    return ServeConfig.from_dict(*read_config(path))


def read_config(path: Path) -> tuple[Any, Where]:
    """A config file's parsed value within the config limits (hbone.safeyaml: size, nesting, no aliases of
    mappings/lists; syntax errors as `path:LINE: invalid YAML: ...`), and where it is: a `Where` that gives every
    later error its `file:LINE`."""
    text = read_limited(path)
    return safe_load(text, str(path)), Where(str(path), lines=YamlLines(text))


def read_yaml(path: Path) -> Any:
    """`read_config` without the locations."""
    return read_config(path)[0]
