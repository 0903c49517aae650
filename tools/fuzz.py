#!/usr/bin/env python3
"""Fuzz one parser or decoder (harnesses in tests/fuzz/).

    python tools/fuzz.py --list
    python tools/fuzz.py NAME --time 3600            # long coverage-guided run (atheris), corpus grows in .fuzz/NAME
    python tools/fuzz.py NAME --time 3600 --workers 2
    python tools/fuzz.py NAME --replay crash-1234...  # reproduce a crash (prints the traceback)
    python tools/fuzz.py --make-corpus               # add new harness seeds to tests/fuzz/corpus/

A crash leaves its input in --artifacts (default .fuzz/artifacts/NAME). Make it a regression test in
tests/unit/test_fuzz_regressions.py and copy the file into tests/fuzz/corpus/NAME/.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz import engine  # noqa: E402
from tests.fuzz.harness import CORPUS_DIR, NAMES, load  # noqa: E402


def make_corpus(fresh: bool) -> None:
    """Write each harness's seeds. Seeds already present (by label) are kept unless `fresh`: some encoders are
    randomised (a TLS ClientHello's random and key share), and the committed corpus should not churn."""
    for name in NAMES:
        folder = CORPUS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        if fresh:
            for old in folder.iterdir():
                if not old.name.startswith(("crash-", "timeout-", "oom-", "regression-")):
                    old.unlink()
        present = {p.name.rsplit("-", 1)[0] for p in folder.iterdir()}
        for label, data in load(name).seeds().items():
            if label not in present:
                (folder / f"{label}-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
        print(f"{name}: {len(list(folder.iterdir()))} files")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="harness name (see --list)")
    ap.add_argument("--time", type=int, default=60, help="seconds to fuzz (default 60)")
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--corpus-out", type=Path, help="where new inputs go (default .fuzz/NAME)")
    ap.add_argument("--artifacts", type=Path, help="where crashing inputs go (default .fuzz/artifacts/NAME)")
    ap.add_argument("--seed", type=int, help="engine seed (default: random, printed by libFuzzer)")
    ap.add_argument("--workers", type=int, default=1, help="parallel atheris processes")
    ap.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="run these inputs once and exit")
    ap.add_argument("--list", action="store_true", help="list the harnesses")
    ap.add_argument("--make-corpus", action="store_true", help="add missing seeds to the committed corpus")
    ap.add_argument("--fresh", action="store_true", help="with --make-corpus: rewrite every seed")
    args = ap.parse_args()
    if args.list:
        print("\n".join(NAMES))
        return 0
    if args.make_corpus:
        make_corpus(args.fresh)
        return 0
    if args.name not in NAMES:
        ap.error(f"NAME must be one of: {', '.join(NAMES)}")
    if args.replay:
        engine.replay(load(args.name), args.replay)
        print("no crash", file=sys.stderr)
        return 0
    corpus_out = args.corpus_out or ROOT / ".fuzz" / args.name
    artifacts = args.artifacts or ROOT / ".fuzz" / "artifacts" / args.name
    use_atheris = args.engine == "atheris" or (args.engine == "auto" and engine.have_atheris())
    if use_atheris:
        engine.run_atheris(args.name, args.time, corpus_out, artifacts, args.seed, args.workers)
        return 0  # not reached: libFuzzer exits the process
    if args.engine == "auto":
        print("atheris is not installed: fuzzing with hypothesis instead", file=sys.stderr)
    return engine.run_hypothesis(args.name, args.time, artifacts, args.seed)


if __name__ == "__main__":
    sys.exit(main())
