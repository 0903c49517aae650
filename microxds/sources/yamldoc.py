"""YAML/JSON documents that remember where each value came from.

PyYAML's composer gives a node tree with line marks; the constructor then builds plain Python values from the same
nodes. We keep both, so validation works on plain dicts and lists while errors can still point at `file:line`.
JSON is parsed by the same loader (it is, for config purposes, a YAML subset), so JSON errors get lines too.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from hbone.safeyaml import MAX_DEPTH, locate_problem, node_line, walk_node, yaml_problem

from ..errors import ConfigError

try:  # libyaml is several times faster; fall back to the pure-Python loader when it is not built.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


Path = tuple[str | int, ...]


class Document:
    """One YAML document: its plain value and the node tree it came from (for `file:line`).

    A JSON file is parsed with the C `json` module and its line-tracking node tree is only composed when a line
    is asked for (an error, a warning, `ConfigSnapshot.origin`), so reloading a valid 2,000-resource JSON file
    does not pay for the YAML composer (~60% of a reload before).
    """

    __slots__ = ("_node", "_text", "data", "file")

    def __init__(self, file: str, data: Any, node: yaml.Node | None, *, text: str | None = None) -> None:
        self.file = file
        self.data = data
        self._node = node
        self._text = text  # set when `node` is to be composed on first use

    @property
    def node(self) -> yaml.Node | None:
        if self._node is None and self._text is not None:
            text, self._text = self._text, None
            with contextlib.suppress(yaml.YAMLError):
                self._node = _Loader(text).get_single_node()
        return self._node

    def line(self, path: Path = ()) -> int:
        """1-based line of the value at `path` (keys and list indices); the nearest known ancestor otherwise."""
        return node_line(self.node, path)

    def key_line(self, path: Path, key: str) -> int | None:
        """1-based line of the first mapping key named `key` anywhere under `path`, if any."""
        node = walk_node(self.node, path)
        found = _find_key(node, key) if node is not None else None
        return found.start_mark.line + 1 if found is not None else None


def _limits(text: str, file: str, value: Any) -> None:
    """Aliases of mappings/lists and over-deep nesting are refused at their line (hbone.safeyaml)."""
    problem = locate_problem(text, value)
    if problem is not None:
        raise ConfigError(problem[1], file=file, line=problem[0])


def load_documents(text: str, file: str) -> list[Document]:
    """Parse every document in `text`. A syntax error becomes ConfigError at the line YAML reports; so do the
    hostile-input limits (aliases of mappings/lists, nesting deeper than `MAX_DEPTH`)."""
    if file.endswith(".json"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            pass  # not strict JSON (YAML in a .json file, a syntax error, too deep): the YAML path reports the line
        else:
            _limits(text, file, data)
            return [Document(file, data, None, text=text)]
    loader = _Loader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            _limits(text, file, data)
            docs.append(Document(file, data, node))
    except RecursionError:  # the composer recurses per level: find the over-deep node's line without it
        line, reason = yaml_problem(text) or (None, f"nesting deeper than {MAX_DEPTH} levels")
        raise ConfigError(reason, file=file, line=line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {reason}", file=file, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None
    finally:
        loader.dispose()
    return docs


def _find_key(node: yaml.Node, key: str) -> yaml.Node | None:
    """Depth-first search for a mapping key; returns the key node (its line is where the typo is)."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


@dataclass(frozen=True, slots=True)
class Located:
    """A value inside a document, with the path that leads to it (for error locations)."""

    doc: Document
    path: Path
    value: Any

    @property
    def file(self) -> str:
        return self.doc.file

    @property
    def line(self) -> int:
        return self.doc.line(self.path)

    @property
    def where(self) -> str:
        return f"{self.doc.file}:{self.line}"

    def child(self, step: str | int) -> Located:
        container: Any = self.value
        value = container[step] if isinstance(container, (dict, list)) else None  # type: ignore[index]
        return Located(self.doc, (*self.path, step), value)

    def error(self, reason: str, step: str | int | None = None) -> ConfigError:
        path = self.path if step is None else (*self.path, step)
        return ConfigError(reason, file=self.doc.file, line=self.doc.line(path))
