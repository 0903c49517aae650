"""Parse and validate a whole configuration (sans-IO: text in, ConfigSnapshot out).

A file holds one or more YAML/JSON documents in Envoy's file-based xDS form, a DiscoveryResponse:

    resources:
      - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
        name: echo
        ...

plus the ambient shorthand (`workloads:`, `services:`, `policies:`, see ambient.py) and node groups:

    groups:                 # alias: node_groups
      edge:                 # a group name; how a node maps to a group is the server's choice
        resources: [...]    # added for this group; replaces a common resource of the same type and name
        workloads: [...]    # shorthand is combined with the common shorthand for this group

Resources outside `groups:` go to every node. The configuration is validated as a whole: any error rejects all of
it and every error found is reported as `file:line: reason`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from google.protobuf.message import Message

from hbone.configtext import unknown_keys_text
from microxds.protoreg import parse_message

from ..errors import ConfigError, ConfigErrors, DuplicateResourceError, UnknownTypeError
from ..resources import ADDRESS, PREFIX, Resource, address_aliases, resource_name
from . import pgv
from .ambient import build_ambient
from .configsnapshot import ConfigSnapshot, freeze
from .references import check_references
from .wrapped import unwrap
from .yamldoc import Document, Located, load_documents

DEFAULT_ROOT_NAMESPACE = "istio-system"
_SCOPE_KEYS = ("resources", "workloads", "services", "policies")
_TOP_KEYS = {*_SCOPE_KEYS, "groups", "node_groups", "root_namespace", "version_info", "type_url", "nonce"}
_FIELD_HINTS = (
    re.compile(r'has no field named "([^"]+)"'),
    re.compile(r"Failed to parse (\w+) field"),
    re.compile(r'for enum type "[^"]+" at "[\w.]*?(\w+)"'),
    re.compile(r'at "[\w.\[\]]*?\.(\w+)(?:\[\d+\])?"'),
)


@dataclass
class _Scope:
    """The items of one scope: the common one ("") or a node group."""

    resources: list[Located] = field(default_factory=list)
    workloads: list[Located] = field(default_factory=list)
    services: list[Located] = field(default_factory=list)
    policies: list[Located] = field(default_factory=list)

    def extend(self, doc: Document, body: dict[str, Any], path: tuple[str | int, ...]) -> None:
        for key in _SCOPE_KEYS:
            if key not in body or body[key] is None:
                continue
            values = body[key]
            if not isinstance(values, list):
                raise ConfigError(f"`{key}` must be a list", file=doc.file, line=doc.line((*path, key)))
            getattr(self, key).extend(Located(doc, (*path, key, i), v) for i, v in enumerate(values))

    @property
    def has_shorthand(self) -> bool:
        return bool(self.workloads or self.services or self.policies)


def _short(reason: str) -> str:
    # json_format appends the full list of available fields; the field path before it is what helps.
    return reason.split("\n", 1)[0].split(" Available Fields", 1)[0].strip()


def parse_resource(item: Located) -> tuple[str, Message]:
    """One `resources:` entry → (type_url, message). Errors point at the entry or at the offending field."""
    if not isinstance(item.value, dict):
        raise item.error(f"a resource must be a mapping with an @type, got {type(item.value).__name__}")
    type_url = item.value.get("@type")
    if not isinstance(type_url, str) or not type_url:
        raise item.error("resource has no @type")
    body = {k: v for k, v in item.value.items() if k != "@type"}
    try:
        msg = parse_message(body, type_url)
    except UnknownTypeError as exc:
        raise UnknownTypeError(exc.reason, file=item.file, line=item.doc.line((*item.path, "@type"))) from None
    except ConfigError as exc:
        line = None
        for pattern in _FIELD_HINTS:
            m = pattern.search(exc.reason)
            if m is not None:
                line = item.doc.key_line(item.path, m.group(1))
                if line is not None:
                    break
        raise ConfigError(_short(exc.reason), file=item.file, line=line or item.line) from None
    return PREFIX + str(msg.DESCRIPTOR.full_name), msg


# Content version -> violations: a reload re-checks only the resources that changed (a 2,000-cluster reload
# would otherwise pay ~0.3 ms per resource again). Bounded; cleared when full.
_CHECKED: dict[tuple[str, str], list[pgv.Violation]] = {}
_CHECKED_MAX = 65536


def _rule_errors(res: Resource, msg: Message, item: Located) -> list[ConfigError]:
    """What Envoy would NACK by its protos' validate rules, located at the offending field's line."""
    key = (res.type_url, res.version)
    violations = _CHECKED.get(key)
    if violations is None:
        violations = pgv.check(msg)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = violations
    return [ConfigError(str(v), file=item.file, line=_violation_line(item, v.path)) for v in violations]


def _violation_line(item: Located, steps: tuple[pgv.Step, ...]) -> int:
    """The line of the deepest part of a field path present in the YAML (keys in snake_case or camelCase)."""
    path: list[str | int] = list(item.path)
    value: Any = item.value
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and 0 <= step < len(value):
            path.append(step)
            value = value[step]
            continue
        if isinstance(value, dict):
            key = str(step)
            camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
            found = key if key in value else camel if camel in value else None
            if found is not None:
                path.append(found)
                value = value[found]
                continue
        break
    return item.doc.line(tuple(path))


def _build_scope(
    scope: _Scope, shorthand: _Scope, root_namespace: str, warnings: list[str], errors: list[ConfigError]
) -> list[tuple[str, Message, Located]]:
    """Parse a scope's resources and convert its shorthand; collect errors rather than stopping at the first."""
    built: list[tuple[str, Message, Located]] = []
    for item in scope.resources:
        try:
            type_url, msg = parse_resource(item)
        except ConfigError as exc:
            errors.append(exc)
            continue
        built.append((type_url, msg, item))
    if shorthand.has_shorthand:
        try:
            ambient, warns = build_ambient(
                shorthand.workloads, shorthand.services, shorthand.policies, root_namespace=root_namespace
            )
        except ConfigError as exc:
            errors.append(exc)
        else:
            built.extend(ambient)
            warnings.extend(warns)
    return built


def _index(
    built: list[tuple[str, Message, Located]], group: str, errors: list[ConfigError]
) -> tuple[dict[str, dict[str, Resource]], dict[tuple[str, str, str], Located]]:
    """Serialise each message once, reject unnamed and duplicate resources."""
    types: dict[str, dict[str, Resource]] = {}
    origins: dict[tuple[str, str, str], Located] = {}
    for parsed_type, parsed, item in built:
        try:
            type_url, msg, ttl = unwrap(parsed_type, parsed)
        except ConfigError as exc:
            errors.append(exc.at(item.file, item.line))
            continue
        try:
            name = resource_name(msg, type_url)
        except ValueError as exc:
            errors.append(item.error(str(exc)))
            continue
        if not name or name.endswith("/"):
            field_name = "cluster_name" if "cluster_name" in msg.DESCRIPTOR.fields_by_name else "name"
            errors.append(item.error(f"{type_url.removeprefix(PREFIX)} has no name (set `{field_name}`)"))
            continue
        by_name = types.setdefault(type_url, {})
        if name in by_name:
            first = origins[(group, type_url, name)].where
            short = type_url.removeprefix(PREFIX)
            errors.append(
                DuplicateResourceError(
                    f"duplicate {short} {name!r} (first defined at {first})", file=item.file, line=item.line
                )
            )
            continue
        aliases = address_aliases(msg) if type_url == ADDRESS else ()
        res = Resource.of(msg, type_url=type_url, name=name, aliases=aliases, ttl=ttl)
        rule_errors = _rule_errors(res, msg, item)
        if rule_errors:
            errors.extend(rule_errors)
            continue
        by_name[name] = res
        origins[(group, type_url, name)] = item
    return types, origins


def _collect(documents: Iterable[Document]) -> tuple[_Scope, dict[str, _Scope], str]:
    common, groups, root_namespace, root_where = _Scope(), dict[str, _Scope](), None, ""
    for doc in documents:
        if doc.data is None:
            continue  # an empty document (e.g. a trailing `---`)
        if not isinstance(doc.data, dict):
            raise ConfigError("the top level must be a mapping (resources:, workloads:, ...)", file=doc.file, line=1)
        reason = unknown_keys_text(doc.data, sorted(_TOP_KEYS), noun="top-level key")
        if reason is not None:
            first = min(str(k) for k in doc.data if k not in _TOP_KEYS)
            raise ConfigError(reason, file=doc.file, line=doc.line((first,)))
        if "root_namespace" in doc.data:
            value = str(doc.data["root_namespace"])
            here = f"{doc.file}:{doc.line(('root_namespace',))}"
            if root_namespace is not None and value != root_namespace:
                raise ConfigError(f"root_namespace {value!r} conflicts with {root_namespace!r} set at {root_where}")
            root_namespace, root_where = value, here
        common.extend(doc, doc.data, ())
        for key in ("groups", "node_groups"):
            raw = doc.data.get(key)
            if raw is None:
                continue
            if not isinstance(raw, dict):
                raise ConfigError(f"`{key}` must map group names to resources", file=doc.file, line=doc.line((key,)))
            for name, body in raw.items():
                if not isinstance(body, dict) or set(body) - set(_SCOPE_KEYS):
                    reason = f"group {name!r} must be a mapping with any of: {', '.join(_SCOPE_KEYS)}"
                    raise ConfigError(reason, file=doc.file, line=doc.line((key, name)))
                groups.setdefault(str(name), _Scope()).extend(doc, body, (key, name))
    return common, groups, root_namespace or DEFAULT_ROOT_NAMESPACE


def build_snapshot(documents: Iterable[Document]) -> ConfigSnapshot:
    """Validate documents as one configuration. Raises ConfigError (ConfigErrors when there are several)."""
    docs = list(documents)
    common, groups, root_namespace = _collect(docs)
    errors: list[ConfigError] = []
    warnings: list[str] = []
    types, origins = _index(_build_scope(common, common, root_namespace, warnings, errors), "", errors)
    views: dict[str, Any] = {}
    for group, scope in sorted(groups.items()):
        # Shorthand is resolved together with the common shorthand (a group's workload may back a common service).
        combined = _Scope(
            [], common.workloads + scope.workloads, common.services + scope.services, common.policies + scope.policies
        )
        own_items = _build_scope(scope, combined if scope.has_shorthand else _Scope(), root_namespace, [], errors)
        own, own_origins = _index(own_items, group, errors)
        merged = {t: dict(by_name) for t, by_name in types.items()}
        for type_url, by_name in own.items():
            merged.setdefault(type_url, {}).update(by_name)
        views[group] = freeze(merged)
        origins.update(own_origins)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    files = tuple(dict.fromkeys(d.file for d in docs))
    snap = ConfigSnapshot(freeze(types), MappingProxyType(views), _Origins(origins), tuple(warnings), files)
    ref_errors, ref_warnings = check_references(snap)
    if ref_errors:
        raise ref_errors[0] if len(ref_errors) == 1 else ConfigErrors(ref_errors)
    return replace(snap, warnings=(*snap.warnings, *(str(w) for w in ref_warnings))) if ref_warnings else snap


class _Origins(Mapping[tuple[str, str, str], str]):
    """(group, type_url, name) -> "file:line", the line found only when asked (it may compose a JSON file)."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[tuple[str, str, str], Located]) -> None:
        self._items = items

    def __getitem__(self, key: tuple[str, str, str]) -> str:
        return self._items[key].where

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def parse_texts(files: Iterable[tuple[str, str]]) -> ConfigSnapshot:
    """Parse `(file name, text)` pairs as one configuration."""
    docs: list[Document] = []
    errors: list[ConfigError] = []
    for name, text in files:
        try:
            docs.extend(load_documents(text, name))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return build_snapshot(docs)
