"""`microxds validate PATH…`: check configs offline exactly as `serve` checks every load and reload."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from microxds.validate import validate_paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate",
        help="check config files offline (what serve checks, Envoy's proto rules, cross-references)",
        description="Check each PATH (a file or a directory, as `serve --config` reads it): YAML, @types and fields, "
        "the validate rules of Envoy's protos, names, ambient shorthand, and references (listener -> routes -> "
        "clusters -> endpoints, services -> workloads). Problems print as file:line: reason. Exit 1 on errors.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="config file or directory")
    p.add_argument("--strict", action="store_true", help="warnings (dangling references) are errors too")
    p.add_argument("--json", action="store_true", help="one JSON object per PATH: source, ok, errors, warnings")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reports = validate_paths(args.paths, strict=args.strict)
    for report in reports:
        if args.json:
            doc = {"source": report.source, "ok": report.ok, "errors": report.errors, "warnings": report.warnings}
            if report.snapshot is not None:
                doc.update(resources=report.snapshot.count(), version=report.snapshot.version)
            print(json.dumps(doc))
        else:
            print("\n".join(report.lines()))
    return 0 if all(r.ok for r in reports) else 1
