"""Run the HTTP/2 driver tests against the lowest and the highest h2/hyperframe/hpack that pyproject.toml allows.

    python tools/h2matrix.py [--cache DIR] [pytest args...]

Each version set is installed once with `pip install --no-deps --target` into the cache (default `.venv/h2matrix`,
reused while the pins stay the same) and put in front of the venv's own copies with PYTHONPATH, so the rest of
the environment is shared. It first checks that pyproject.toml declares exactly the ranges `hbone.net.h2.deps`
enforces at import. `tools/test.sh` runs it; warm it takes about 7 s on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hbone.net.h2.deps import SUPPORTED, spec  # noqa: E402 - after the path setup

# test_net_h2engine/h2tuning/h2memory/h2fastdata drive the h2 engine itself; test_h2_native* hold the default (native)
# engine to stock h2 as its oracle, so a behaviour change at either end of the h2 range shows up there too.
TESTS = ["tests/unit/test_net_*.py", "tests/unit/test_grpc_h2frames.py", "tests/unit/test_h2_native*.py"]
# The two property searches against stock h2 take a minute together; the main pytest run covers them.
HEAVY = "not test_acceptable_only_accepts_what_h2_accepts and not test_random_sequences_are_indistinguishable_from_h2"


def declared() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep)
        if m and m.group(1).lower() in {name for name, _, _ in SUPPORTED}:
            out[m.group(1).lower()] = m.group(1).lower() + m.group(2).replace(" ", "")
    return out


def version_sets() -> dict[str, list[str]]:
    lowest = [f"{name}=={'.'.join(map(str, low))}" for name, low, _ in SUPPORTED]
    highest = [spec(name) for name, _, _ in SUPPORTED]
    return {"lowest": lowest, "highest": highest}


def install(cache: Path, label: str, reqs: list[str]) -> Path:
    target = cache / f"{label}-{hashlib.sha256(' '.join(reqs).encode()).hexdigest()[:12]}"
    if not target.is_dir():
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
        subprocess.run([*pip, "--target", str(tmp), *reqs], check=True)
        tmp.rename(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".venv" / "h2matrix")
    args, pytest_args = parser.parse_known_args()
    want = {name: spec(name) for name, _, _ in SUPPORTED}
    if declared() != want:
        print(f"pyproject.toml declares {declared()} but hbone.net.h2.deps enforces {want}", file=sys.stderr)
        return 1
    rc = 0
    for label, reqs in version_sets().items():
        target = install(args.cache, label, reqs)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
        probe = "import h2, hyperframe, hpack; print(h2.__version__, hyperframe.__version__, hpack.__version__)"
        versions = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True)
        h2v, hfv, hpv = versions.stdout.split()
        print(f"== HTTP/2 driver tests, {label} allowed: h2 {h2v}, hyperframe {hfv}, hpack {hpv}", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", HEAVY, *pytest_args]
        tests = sorted(str(p.relative_to(ROOT)) for pattern in TESTS for p in ROOT.glob(pattern))
        rc = subprocess.run([*cmd, *tests], env=env, cwd=ROOT, check=False).returncode or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
