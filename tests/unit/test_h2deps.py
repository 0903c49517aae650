"""The declared HTTP/2 library ranges are the ones enforced and tested; anything else fails in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import h2
import pytest

from hbone.errors import UnsupportedDependency
from hbone.net.h2 import deps as h2deps

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_exactly_the_supported_ranges() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, _, _ in h2deps.SUPPORTED:
        assert h2deps.spec(name) in deps  # main declared h2>=4.1, where every connection crashed
    assert h2deps.spec("h2") == "h2>=4.4,<4.5"


@pytest.mark.parametrize("version", ["4.3.0", "4.5.0", "4.1.0", "5.0.0"])
def test_an_unsupported_h2_fails_naming_the_range(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(h2, "__version__", version)
    with pytest.raises(UnsupportedDependency) as info:
        h2deps.check()
    assert str(info.value) == f"hbone needs h2>=4.4,<4.5 but h2 {version} is installed: pip install 'h2>=4.4,<4.5'"
    assert isinstance(info.value, ImportError)


@pytest.mark.parametrize("version", ["4.4.0", "4.4.1", "4.4.10rc1"])
def test_supported_versions_pass(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(h2, "__version__", version)
    h2deps.check()


@pytest.mark.parametrize("cli", ["hbone", "microxds"])
def test_the_clis_print_one_line(tmp_path: Path, cli: str) -> None:
    fake = tmp_path / "h2"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "4.3.0"\n')
    proc = subprocess.run(
        [sys.executable, "-m", f"{cli}.cli", "serve", "--help"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{cli}: hbone needs h2>=4.4,<4.5 but h2 4.3.0 is installed: pip install 'h2>=4.4,<4.5'"
    ]
