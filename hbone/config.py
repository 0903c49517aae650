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
from typing import Any

from hbone.admin.options import KEYS as ADMIN_KEYS
from hbone.admin.options import config_keys as admin_config_keys
from hbone.authz.config import policy_from_dict
from hbone.authz.defaults import DefaultMode, default_policies
from hbone.authz.model import Policy
from hbone.errors import ConfigError
from hbone.identity.spiffe import SpiffeId
from hbone.net.relay import IDLE_TIMEOUT
from hbone.net.settings import H2Settings
from hbone.safeyaml import read_limited, safe_load
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


_LIMIT_INTS = ("max_connections", "max_tunnels", "max_pending_dials", "grpc_connection_bytes", "grpc_process_bytes")


@dataclass
class ProcessLimits:
    """Per-process caps of `hbone serve` (README "Security and robustness")."""

    handshake_timeout: float = 10.0
    max_connections: int = 8192
    max_tunnels: int = 16_384
    max_pending_dials: int = 1_024
    grpc_connection_bytes: int = 64 * 1024 * 1024
    grpc_process_bytes: int = 256 * 1024 * 1024

    def update(self, data: Any, where: str) -> None:
        if data is None:
            return
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        for key, value in data.items():
            if key == "handshake_timeout":
                self.handshake_timeout = parse_duration(value, f"{where}.{key}")
                if self.handshake_timeout <= 0:
                    raise ConfigError(f"{where}.{key}: must be positive")
            elif key in _LIMIT_INTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
                setattr(self, key, value)
            else:
                known = ", ".join(("handshake_timeout", *_LIMIT_INTS))
                raise ConfigError(f"{where}: unknown key {key!r}; known: {known}")


_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def parse_duration(value: Any, where: str) -> float:
    """`10s`, `500ms`, `2m`, `1h`, or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: expected a duration, got {value!r}")
    text, scale = str(value).strip(), 1.0
    for suffix, unit in _UNITS:
        if isinstance(value, str) and text.endswith(suffix):
            text, scale = text[: -len(suffix)], unit
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(f"{where}: invalid duration {value!r} (use e.g. 500ms, 10s, 2m)") from None
    if seconds < 0:
        raise ConfigError(f"{where}: duration must not be negative")
    return seconds


def parse_idle_timeout(value: Any, where: str) -> float | None:
    """An idle timeout: a duration, where 0 means none."""
    return parse_duration(value, where) or None


def parse_listen(text: str, default_host: str = "0.0.0.0") -> Authority:
    """A listen address: `HOST:PORT`, `[V6]:PORT` or `:PORT` (on `default_host`); port 0 picks a free port.

    The one parser of listen flags for both CLIs (`hbone … --listen`, `microxds serve --listen`, …).
    """
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"bad listen address {text!r}: use HOST:PORT, [V6]:PORT or :PORT (port 0 picks one)")
    if not host:
        host = f"[{default_host}]" if ":" in default_host else default_host
    try:
        probe = parse_authority(f"{host}:{port if port != '0' else '1'}")
    except ValueError as e:
        raise ConfigError(f"bad listen address {text!r}: {e}; use HOST:PORT, [V6]:PORT or :PORT") from None
    return Authority(probe.host, int(port), probe.ip)


def listen_host(addr: Authority) -> str:
    """The host string to bind: the IP in text form, or the hostname."""
    return str(addr.ip) if addr.ip is not None else addr.host


def _address(value: Any, where: str) -> Authority | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    try:
        return parse_listen(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


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
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "config") -> ServeConfig:
        cfg = cls()
        if data is None:
            return cfg
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping")
        unknown = sorted(map(str, set(data) - set(_TOP)))  # YAML keys may be null, numbers, ...
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_TOP)}")
        if "listen" in data:
            cfg.listen = _address(data["listen"], f"{source}: listen")
        if "h2c_listen" in data:
            cfg.h2c_listen = _address(data["h2c_listen"], f"{source}: h2c_listen")
        if data.get("certs") is not None:
            cfg.certs = Path(str(data["certs"]))
        if "dial_timeout" in data:
            cfg.dial_timeout = parse_duration(data["dial_timeout"], f"{source}: dial_timeout")
        if "tunnel_idle_timeout" in data:
            cfg.tunnel_idle_timeout = parse_idle_timeout(data["tunnel_idle_timeout"], f"{source}: tunnel_idle_timeout")
        if "drain_timeout" in data:
            cfg.drain_timeout = parse_duration(data["drain_timeout"], f"{source}: drain_timeout")
        cfg.admin_ports = admin_config_keys(data, source)
        cfg._authz(data.get("authorization"), f"{source}: authorization")
        cfg._http2(data.get("http2"), f"{source}: http2")
        cfg.limits.update(data.get("limits"), f"{source}: limits")
        return cfg

    def _authz(self, data: Any, where: str) -> None:
        if data is None:
            return
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping with mode and/or policies")
        unknown = sorted(map(str, set(data) - {"mode", "policies"}))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if "mode" in data:
            self.mode = DefaultMode.parse(str(data["mode"]))
        raw = data.get("policies") or []
        if not isinstance(raw, list):
            raise ConfigError(f"{where}.policies: expected a list")
        policies = []
        for i, item in enumerate(raw):
            try:
                policies.append(policy_from_dict(item))
            except ConfigError as e:
                raise ConfigError(f"{where}.policies[{i}]: {e}") from e
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

    def _http2(self, data: Any, where: str) -> None:
        if data is None:
            return
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in _H2:
                raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(_H2)}")
            if key in _DURATIONS:
                changes[_H2[key]] = None if value is None else parse_duration(value, f"{where}.{key}")
            elif value is None and key == "max_pending_streams":
                changes[_H2[key]] = None
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
            else:
                changes[_H2[key]] = value
        try:
            self.h2 = self.h2.replace(**changes)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e


def load_serve_config(path: Path) -> ServeConfig:
    return ServeConfig.from_dict(read_yaml(path), str(path))


def read_yaml(path: Path) -> Any:
    """Parse a YAML file within the config limits (hbone.safeyaml: size, nesting, no aliases of mappings/lists);
    errors name the file and line (`path:LINE: invalid YAML: ...`)."""
    return safe_load(read_limited(path), str(path))
