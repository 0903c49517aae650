"""The repository stands on its own: no file points outside it, and every `docs/….md` it cites exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|shared/reference|reference §|(?<![\w/])reference/[\w-]+\.md|DESIGN\.md")
CITED = re.compile(r"docs/([\w-]+\.md)")
TEXT = (".py", ".md", ".yaml", ".yml", ".json", ".sh", ".toml", ".txt", ".proto")


def _files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in out.splitlines() if name.endswith(TEXT) and not name.startswith("tests/fuzz/")]


def test_nothing_points_outside_the_repository() -> None:
    offenders = []
    for path in _files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and path != Path(__file__):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not offenders, "references outside the repository (write it into docs/ instead):\n" + "\n".join(offenders)


def test_cited_docs_exist() -> None:
    missing = set()
    for path in _files():
        for name in CITED.findall(path.read_text(errors="replace")):
            if not (ROOT / "docs" / name).is_file():
                missing.add(f"{path.relative_to(ROOT)} cites docs/{name}")
    assert not missing, sorted(missing)
