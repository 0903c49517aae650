"""Runs one harness under a fuzzing engine: atheris (coverage-guided libFuzzer) when installed, else a hypothesis
search seeded from the same corpus (the CI fallback on platforms without an atheris wheel).

Each run ends in the calling process (libFuzzer exits when its time is up), so `tools/fuzz.py` calls these as a
process of its own. Exit status: 0 clean; non-zero with the crashing input written to the artifacts folder
(`crash-<sha1>`, or `timeout-…`/`oom-…` from libFuzzer) and its traceback on stderr.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

from tests.fuzz.harness import CORPUS_DIR, INSTRUMENTED, Harness, corpus_files, load

#: One input running longer than this is a hang (libFuzzer writes it as timeout-<sha1>).
INPUT_TIMEOUT_S = 10
RSS_LIMIT_MB = 2048


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(name: str, seconds: int, corpus_out: Path, artifacts: Path, seed: int | None, workers: int) -> None:
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        harness = load(name)
    corpus_out.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        f"fuzz-{name}",
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={harness.max_len}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    if seed is not None:
        argv.append(f"-seed={seed}")
    merged = _dictionary(name, corpus_out.parent)
    if merged is not None:
        argv.append(f"-dict={merged}")
    if workers > 1:
        argv += [f"-workers={workers}", f"-jobs={workers}"]
    argv.append(str(corpus_out))  # libFuzzer writes new inputs into the first folder, reads the others
    if (CORPUS_DIR / name).is_dir():
        argv.append(str(CORPUS_DIR / name))
    atheris.Setup(argv, harness.one_input)
    atheris.Fuzz()


DICT_DIR = Path(__file__).resolve().parent / "dicts"


def _dictionary(name: str, folder: Path) -> Path | None:
    """libFuzzer takes one -dict file: the common tokens plus the harness's own (tests/fuzz/dicts/)."""
    parts = [DICT_DIR / "common.dict", DICT_DIR / f"{name}.dict"]
    text = "\n".join(p.read_text() for p in parts if p.is_file())
    if not text:
        return None
    merged = folder / f"{name}.dict"
    merged.write_text(text + "\n")
    return merged


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A few byte-level edits, like a mutating fuzzer's (flip, insert, delete, duplicate, truncate)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 3 and out:
            start = rng.randrange(len(out))
            out[pos:pos] = out[start : start + rng.randint(1, 16)]
        else:
            del out[pos:]
    return bytes(out)


def run_hypothesis(name: str, seconds: int, artifacts: Path, seed: int | None) -> int:
    """The fallback: random and corpus-mutated inputs through hypothesis (which shrinks a failure)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis import strategies as st

    harness = load(name)
    seeds = [p.read_bytes() for p in corpus_files(name)] or [b""]
    mutated = st.tuples(st.sampled_from(seeds), st.randoms(use_true_random=False)).map(lambda t: _mutate(t[1], t[0]))
    inputs = st.one_of(st.binary(max_size=harness.max_len), mutated)

    failing: list[bytes] = []

    def check(data: bytes) -> None:
        try:
            harness.one_input(data)
        except BaseException:
            failing.append(data)  # hypothesis shrinks and replays the minimal failure last
            raise

    for data in seeds:
        harness.one_input(data)
    end = time.monotonic() + seconds
    rounds = 0
    rng = random.Random(seed)
    while time.monotonic() < end:
        # A fresh hypothesis seed per round (from --seed when given, so a run is repeatable end to end).
        run = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))(
            fixed_seed(rng.getrandbits(64))(given(inputs)(check))
        )
        try:
            run()
        except BaseException:
            if failing:
                _save(artifacts, failing[-1])
            raise
        rounds += 1
    print(f"hypothesis: {rounds * 200} inputs in {seconds} s, no crash", file=sys.stderr)
    return 0


def _save(artifacts: Path, data: bytes) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)


def replay(harness: Harness, files: list[Path]) -> None:
    """Run saved inputs once each (a crash file, or a corpus); the first unexpected exception propagates."""
    for path in files:
        print(f"replaying {path}", file=sys.stderr)
        harness.one_input(path.read_bytes())
