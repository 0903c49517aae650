"""The config store's layout (sans-IO): one key per resource, its value the resource as in a config file.

    PREFIX/TYPE/NAME                  a resource every node gets
    PREFIX/groups/GROUP/TYPE/NAME     a node group's own resource (as `groups:` in a file)

TYPE is the message's full name (`envoy.config.cluster.v3.Cluster`, no type URL host), NAME the resource name
(it may contain '/'). The value is one YAML or JSON mapping, exactly as an item of a file's `resources:` list
(an `@type`'d message, or a `envoy.service.discovery.v3.Resource` wrapper carrying a `ttl`), parsed and validated
by the same code as files; its type and name must be the key's. `apply` writes canonical JSON.

`parse_entry` validates one key (syntax, `@type`, fields, the protos' validate rules, name); `assemble` turns the
valid entries into a `ConfigSnapshot` (O(entries)), whose cross-references the source then checks as the file loader
does. Each key is parsed once per change, so a one-endpoint edit costs one parse, not a reload of the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf import duration_pb2, json_format

from microxds.protoreg import message_class

from ..errors import ConfigError, ConfigErrors
from ..resources import ADDRESS, PREFIX, Resource, address_aliases, resource_name
from .configsnapshot import ConfigSnapshot, freeze
from .wrapped import DISCOVERY_RESOURCE, unwrap
from .yamlconfig import _rule_errors, parse_resource  # the file loader's own per-resource checks
from .yamldoc import Located, load_documents

GROUPS = "groups"
MAX_VALUE_BYTES = 1 << 20  # etcd's default request limit is 1.5 MiB; a resource beyond 1 MiB is a mistake


@dataclass(frozen=True, slots=True)
class Entry:
    """One valid key: where it goes (group, "" for everyone) and the resource."""

    key: str
    group: str
    resource: Resource


def key_for(prefix: str, type_url: str, name: str, group: str = "") -> str:
    """The key of a resource under `prefix` (which ends with '/')."""
    kind = type_url.removeprefix(PREFIX)
    return f"{prefix}{GROUPS}/{group}/{kind}/{name}" if group else f"{prefix}{kind}/{name}"


def split_key(prefix: str, key: str) -> tuple[str, str, str]:
    """(group, type_url, name) named by `key`; ConfigError if the key does not follow the layout."""
    rest = key.removeprefix(prefix)
    group = ""
    if rest.startswith(GROUPS + "/"):
        group, sep, rest = rest[len(GROUPS) + 1 :].partition("/")
        if not group or not sep:
            raise ConfigError("a group key is PREFIX/groups/GROUP/TYPE/NAME", file=key)
    kind, sep, name = rest.partition("/")
    if not sep or not name or "." not in kind:
        raise ConfigError("a key is PREFIX/TYPE/NAME, TYPE a message name such as envoy.config.cluster.v3.Cluster",
                          file=key)  # fmt: skip
    return group, PREFIX + kind, name


def parse_entry(prefix: str, key: str, value: bytes) -> Entry:
    """Validate one key and its value. Errors read `KEY:LINE: reason`."""
    group, type_url, name = split_key(prefix, key)
    if len(value) > MAX_VALUE_BYTES:
        raise ConfigError(f"value of {len(value)} bytes is over the {MAX_VALUE_BYTES}-byte limit", file=key)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("value is not UTF-8 text (YAML or JSON)", file=key) from None
    docs = [d for d in load_documents(text, key) if d.data is not None]
    if len(docs) != 1:
        raise ConfigError(f"value must be one YAML/JSON document, found {len(docs)}", file=key, line=1)
    item = Located(docs[0], (), docs[0].data)
    got_type, message = parse_resource(item)
    try:
        got_type, message, ttl = unwrap(got_type, message)
        got_name = resource_name(message, got_type)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(getattr(exc, "reason", str(exc)), file=key, line=1) from None
    if got_type != type_url or got_name != name:
        raise ConfigError(
            f"holds {got_type.removeprefix(PREFIX)} {got_name!r}, but the key names "
            f"{type_url.removeprefix(PREFIX)} {name!r}", file=key, line=1,
        )  # fmt: skip
    aliases = address_aliases(message) if type_url == ADDRESS else ()
    res = Resource.of(message, type_url=type_url, name=name, aliases=aliases, ttl=ttl)
    errors = _rule_errors(res, message, item)  # the protos' validate rules, exactly as for files
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return Entry(key, group, res)


def assemble(entries: Iterable[Entry]) -> ConfigSnapshot:
    """The config the valid entries make, with node groups merged over the common resources (as files do)."""
    common: dict[str, dict[str, Resource]] = {}
    own: dict[str, dict[str, dict[str, Resource]]] = {}
    origins: dict[tuple[str, str, str], str] = {}
    for e in entries:
        res = e.resource
        target = common if not e.group else own.setdefault(e.group, {})
        target.setdefault(res.type_url, {})[res.name] = res
        origins[(e.group, res.type_url, res.name)] = f"{e.key}:1"  # "file:line", as for files
    views: dict[str, Any] = {}
    for group, types in sorted(own.items()):
        merged = {t: dict(by_name) for t, by_name in common.items()}
        for type_url, by_name in types.items():
            merged.setdefault(type_url, {}).update(by_name)
        views[group] = freeze(merged)
    return ConfigSnapshot(freeze(common), MappingProxyType(views), MappingProxyType(origins))


def own_resources(snap: ConfigSnapshot) -> Iterable[tuple[str, Resource]]:
    """(group, resource) for every resource a config defines itself: common ones with group "", then each
    group's own (its view minus what it inherits unchanged)."""
    for by_name in snap.resources.values():
        for res in by_name.values():
            yield "", res
    for group, view in sorted(snap.groups.items()):
        for type_url, by_name in view.items():
            for name, res in by_name.items():
                if (group, type_url, name) in snap.origins:
                    yield group, res


def render(res: Resource) -> bytes:
    """Canonical JSON for a resource (what `apply` stores): the message's proto3 JSON with its `@type`, wrapped in
    a `Resource` with `ttl` when it has one."""
    msg = message_class(res.type_url)()
    msg.ParseFromString(res.value)
    body: dict[str, Any] = {"@type": res.type_url, **json_format.MessageToDict(msg, preserving_proto_field_name=True)}
    if res.ttl is not None:
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(int(res.ttl * 1e9))
        body = {"@type": DISCOVERY_RESOURCE, "name": res.name, "ttl": ttl.ToJsonString(), "resource": body}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def desired_keys(prefix: str, snap: ConfigSnapshot) -> Mapping[str, Resource]:
    """key -> resource for everything `snap` defines (what `apply` makes the store hold)."""
    return {key_for(prefix, res.type_url, res.name, group): res for group, res in own_resources(snap)}
