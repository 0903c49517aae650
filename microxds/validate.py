"""`microxds validate`: the checks `microxds serve` applies to every load and reload, offline, as a report.

Everything runs in the config loader (`microxds.sources.yamlconfig`), so `serve`, a reload and `validate` can never
disagree: YAML/JSON syntax, `@type`s and field names, the protoc-gen-validate rules of Envoy's protos
(`microxds.sources.pgv`), names and duplicates, the ambient shorthand, and cross-references
(`microxds.sources.references`: errors for what Envoy NACKs, warnings for what would wait or answer 503).
Other tools (e.g. an `apply` command) call `validate_paths` / `validate_texts` and read the `Report`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from microxds.errors import ConfigError, ConfigErrors
from microxds.sources.configsnapshot import ConfigSnapshot
from microxds.sources.files import config_files, load_texts, read_texts


@dataclass
class Report:
    """What one configuration check found. `ok` is False when there are errors (or warnings, when strict)."""

    source: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshot: ConfigSnapshot | None = None
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not (self.strict and self.warnings)

    def lines(self) -> list[str]:
        """Human-readable: each problem as `file:line: reason`, then one summary line."""
        out = [*self.errors, *(f"{w} (warning)" for w in self.warnings)]
        if self.ok and self.snapshot is not None:
            out.append(f"{self.source}: OK, {self.snapshot.count()} resources, version {self.snapshot.version}")
        else:
            out.append(f"{self.source}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return out


def _flatten(exc: ConfigError) -> list[str]:
    if isinstance(exc, ConfigErrors):
        return [m for e in exc.errors for m in _flatten(e)]
    return [str(exc)]


def validate_texts(source: str, files: Iterable[tuple[str, str]], *, strict: bool = False) -> Report:
    """Check `(file name, text)` pairs as one configuration (what `serve` would load from them)."""
    report = Report(source, strict=strict)
    try:
        report.snapshot = load_texts(files)
    except ConfigError as exc:
        report.errors = _flatten(exc)
        return report
    report.warnings = list(report.snapshot.warnings)
    return report


def validate_path(path: str | os.PathLike[str], *, strict: bool = False) -> Report:
    """Check one config file or directory as `microxds serve --config PATH` would load it."""
    try:
        texts = read_texts(config_files(path))
    except ConfigError as exc:
        return Report(str(path), errors=_flatten(exc), strict=strict)
    return validate_texts(str(path), texts, strict=strict)


def validate_paths(paths: Sequence[str | os.PathLike[str]], *, strict: bool = False) -> list[Report]:
    """Each PATH checked as its own configuration."""
    return [validate_path(p, strict=strict) for p in paths]
