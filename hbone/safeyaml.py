"""Config files are hostile input too: size, nesting and alias limits for every YAML or JSON config reader.

PyYAML's safe loader turns aliases into shared objects that later code (protobuf `Struct` conversion, JSON dumps,
config dumps) copies out in full: a few hundred bytes of `&a [*b, *b, ...]` become gigabytes. Deep nesting ends in
`RecursionError` in the composer or in protobuf's converter. So file size is capped before a file is read, and a
parsed document is refused when a mapping or list is reached twice (an alias: plain YAML and JSON never share one)
or nests deeper than `MAX_DEPTH`; only then is the event stream scanned for the offending line (libyaml's parser is
not recursive). Aliases of scalars are harmless and stay allowed. Used by every config reader of both packages.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import yaml

from hbone.errors import ConfigError

#: Largest config file (or directory of files) read, in bytes: parsing is CPU-bound, and a reload must not block
#: for minutes (a 50 MB file took minutes and GBs). Big meshes split their config into several files.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Deepest nesting of mappings and sequences; Envoy's deepest real configs stay well under 40 levels.
MAX_DEPTH = 100

try:  # libyaml is several times faster; fall back to the pure-Python parser when it is not built.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _too_deep(max_depth: int) -> str:
    return f"nesting deeper than {max_depth} levels"


def _alias(anchor: object) -> str:
    return f"YAML alias *{anchor} of a mapping or list: aliases of mappings and lists are not allowed in config files"


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def yaml_problem(text: str, *, max_depth: int = MAX_DEPTH) -> tuple[int | None, str] | None:
    """`(line, reason)` for the first alias of a mapping/list or over-deep node in `text`, or None. One pass over
    the event stream; syntax errors are left to the loader (it reports them with their line)."""
    depth = 0
    containers: set[str] = set()
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, _OPEN):
                depth += 1
                if depth > max_depth:
                    return _line(event), _too_deep(max_depth)
                if event.anchor is not None:
                    containers.add(event.anchor)
            elif isinstance(event, _CLOSE):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent) and event.anchor in containers:
                return _line(event), _alias(event.anchor)
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


def data_problem(value: Any, *, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a parsed document is refused (a mapping or list reached twice, or nested too deep), or None.

    Iterative and linear (≈10 ms for a 2,000-resource config), so the common path costs almost nothing; the
    line is looked up with `yaml_problem` only when something is wrong."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            return "a mapping or list appears twice (a YAML alias); aliases are not allowed in config files"
        seen.add(id(item))
        if depth > max_depth:
            return _too_deep(max_depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return None


def locate_problem(text: str, value: Any, *, max_depth: int = MAX_DEPTH) -> tuple[int | None, str] | None:
    """`data_problem` with the line it is at (from the event stream), or None when `value` is fine."""
    reason = data_problem(value, max_depth=max_depth) if isinstance(value, dict | list) else None
    if reason is None:
        return None
    return yaml_problem(text, max_depth=max_depth) or (None, reason)


def check_size(size: int, where: str, *, limit: int = MAX_CONFIG_BYTES) -> str | None:
    """A reason when `size` bytes exceed `limit`, else None."""
    if size > limit:
        return f"{where}: {size:,} bytes; config files are limited to {limit:,} bytes"
    return None


def read_limited(path: str | os.PathLike[str], *, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, refused (ConfigError) when it is larger than `limit`: checked by `stat` first, then by
    reading at most `limit + 1` bytes (a file growing meanwhile)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            reason = check_size(os.fstat(f.fileno()).st_size, name, limit=limit)
            data = f.read(limit + 1) if reason is None else b""
    except OSError as e:
        raise ConfigError(f"{name}: cannot read ({e.strerror or e})") from None
    if reason is None:
        reason = check_size(len(data), name, limit=limit)
    if reason is not None:
        raise ConfigError(reason)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def safe_load(text: str, where: str) -> Any:
    """One YAML/JSON document as plain values, within the limits; errors are one line, `where:LINE: reason`."""
    problem: tuple[int | None, str] | None
    try:
        value = yaml.load(text, Loader=_Loader)  # the C *safe* loader
    except RecursionError:  # the composer recurses per level
        problem = yaml_problem(text) or (None, _too_deep(MAX_DEPTH))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{where}:{mark.line + 1}" if mark is not None else where
        raise ConfigError(f"{loc}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    else:
        problem = locate_problem(text, value)
    if problem is None:
        return value
    line, reason = problem
    raise ConfigError(f"{where}:{line}: {reason}" if line is not None else f"{where}: {reason}")


# --- where a value is: line numbers for error messages ----------------------------------------------------------

KeyPath = tuple[str | int, ...]


def child_node(node: yaml.Node, step: str | int) -> yaml.Node | None:
    """The value node under mapping key `step` or at sequence index `step`, or None."""
    if isinstance(node, yaml.MappingNode) and isinstance(step, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == step:
                return value  # type: ignore[no-any-return]
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return node.value[step]  # type: ignore[no-any-return]
    return None


def walk_node(node: yaml.Node | None, path: KeyPath) -> yaml.Node | None:
    """The node at `path`, or None when any step is missing."""
    for step in path:
        if node is None:
            return None
        node = child_node(node, step)
    return node


def node_line(node: yaml.Node | None, path: KeyPath) -> int:
    """1-based line of the value at `path`; the nearest ancestor that exists when the path goes further."""
    best = node.start_mark.line + 1 if node is not None else 1
    for step in path:
        if node is None:
            break
        node = child_node(node, step)
        if node is not None:
            best = node.start_mark.line + 1
    return best


class YamlLines:
    """Lines of a single-document YAML/JSON text by key path (`hbone.configtext.LineLookup`). The node tree is
    composed on first use only, so a valid config never pays for it; None when the text cannot be composed."""

    __slots__ = ("_node", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._node: yaml.Node | None = None

    def line(self, path: KeyPath) -> int | None:
        if self._text is not None:
            text, self._text = self._text, None
            with contextlib.suppress(yaml.YAMLError, RecursionError):
                self._node = _Loader(text).get_single_node()
        return node_line(self._node, path) if self._node is not None else None
