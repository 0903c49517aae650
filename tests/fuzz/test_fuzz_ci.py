"""The fuzz harnesses in CI: every committed corpus input replayed in-process, then each harness fuzzed for a
bounded time (HBONE_FUZZ_SECONDS, default 2) by `tools/fuzz.py` in its own process, two at a time. A crash fails
the test and prints the harness, the engine's traceback and the crashing input. Long runs: `tools/fuzz.py NAME
--time 3600` (README, "Security and robustness")."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.harness import NAMES, corpus_files, load

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("HBONE_FUZZ_SECONDS", "2"))
PARALLEL = 2

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_replays_cleanly(name: str) -> None:
    files = corpus_files(name)
    assert files, f"tests/fuzz/corpus/{name} is empty: run tools/fuzz.py --make-corpus"
    harness = load(name)
    for path in files:
        try:
            harness.one_input(path.read_bytes())
        except BaseException as exc:
            pytest.fail(f"{name}: corpus input {path.name} crashes: {exc!r}")


def _fuzz(name: str, workdir: Path) -> str | None:
    """Run one harness briefly; None when clean, else a report of the crash."""
    artifacts = workdir / "artifacts" / name
    cmd = [
        sys.executable, str(ROOT / "tools" / "fuzz.py"), name, "--time", str(SECONDS),
        "--corpus-out", str(workdir / "corpus" / name), "--artifacts", str(artifacts),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 90, check=False)
    except subprocess.TimeoutExpired as exc:
        return f"{name}: the fuzzer did not finish within {SECONDS + 90} s\n{exc.stderr!s:.4000}"
    if proc.returncode == 0:
        return None
    lines = [f"{name}: exit status {proc.returncode}", proc.stderr[-6000:]]
    for crash in sorted(artifacts.glob("*")) if artifacts.is_dir() else []:
        data = crash.read_bytes()
        lines.append(f"crashing input {crash.name} ({len(data)} bytes): {data[:2000]!r}")
        lines.append(f"base64: {base64.b64encode(data).decode()}")
        lines.append(f"reproduce: python tools/fuzz.py {name} --replay <file with these bytes>")
    return "\n".join(lines)


def test_every_harness_fuzzes_without_a_crash() -> None:
    with tempfile.TemporaryDirectory(prefix="hbone-fuzz-") as tmp, ThreadPoolExecutor(PARALLEL) as pool:
        reports = [r for r in pool.map(lambda n: _fuzz(n, Path(tmp)), NAMES) if r is not None]
    if reports:
        pytest.fail("\n\n".join(reports), pytrace=False)


def test_the_fallback_engine_finds_a_planted_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hypothesis engine (used where atheris has no wheel) finds an IndexError behind a byte comparison
    and keeps the input; a documented error (ValueError here) is not a crash."""
    from tests.fuzz import engine
    from tests.fuzz.harness import Harness

    def planted(data: bytes) -> None:
        if len(data) > 2 and data[0] == 0x7F:
            raise IndexError("planted")
        if data[:1] == b"\x01":
            raise ValueError("documented")

    harness = Harness("planted", planted, (ValueError,), dict)
    monkeypatch.setattr(engine, "load", lambda name: harness)
    monkeypatch.setattr(engine, "corpus_files", lambda name: [])
    with pytest.raises(IndexError, match="planted"):
        engine.run_hypothesis("planted", 30, tmp_path, seed=1)
    (crash,) = tmp_path.glob("crash-*")
    assert crash.read_bytes()[0] == 0x7F
