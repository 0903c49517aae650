"""Tables of `hbone_envoy_bench.py`: same-run ratios ours/Envoy against the targets and every process's CPU.
Input: runs[pair][kind] = list of one dict per repeat (see `run_case`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("bulk", "rr", "rate")
PROXIES = ("client proxy", "server proxy")
ROLES = (*PROXIES, "backend", "load generator")
Run = dict[str, Any]
Runs = dict[str, dict[str, list[Run]]]


def _proxies(r: Run) -> float:
    return float(sum(r["cpu"][p] for p in PROXIES))


def _proxies_io(r: Run) -> float:
    """Read/write-type system calls of both proxies; NaN for figures kept before they were recorded."""
    return float(sum(r["io"][p] for p in PROXIES)) if "io" in r else float("nan")


def _proxies_sys(r: Run) -> float:
    """System (kernel) CPU seconds of both proxies; NaN for figures kept before it was recorded."""
    return float(sum(r["sys"][p] for p in PROXIES)) if "sys" in r else float("nan")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    unit: str
    value: Callable[[Run], float]
    higher_is_better: bool
    target: float | None  # on the ratio ours/Envoy


METRICS = (
    Metric("bulk throughput, one connection", "bulk", "MB/s", lambda r: r["bytes"] / r["seconds"] / 1e6, True, 1.0),
    Metric("1 KiB round trip p50", "rr", "µs", lambda r: r["p50"], False, None),
    Metric("1 KiB round trip p99", "rr", "µs", lambda r: r["p99"], False, 1.2),
    Metric("new tunnels/s", "rate", "/s", lambda r: r["rate"], True, 1.0),
    Metric("CPU per GB (both proxies)", "bulk", "s", lambda r: _proxies(r) / (r["bytes"] / 1e9), False, 1.2),
    Metric("CPU per tunnel (both proxies)", "rate", "ms", lambda r: _proxies(r) / r["ops"] * 1e3, False, 1.2),
    Metric("of which in the kernel, per GB", "bulk", "s", lambda r: _proxies_sys(r) / (r["bytes"] / 1e9), False, None),
    Metric("of which in the kernel, per tunnel", "rate", "ms", lambda r: _proxies_sys(r) / r["ops"] * 1e3, False, None),
    Metric(
        "read/write system calls per MB (both proxies)",
        "bulk",
        "",
        lambda r: _proxies_io(r) / (r["bytes"] / 1e6),
        False,
        None,
    ),
    Metric(
        "read/write system calls per tunnel (both proxies)",
        "rate",
        "",
        lambda r: _proxies_io(r) / r["ops"],
        False,
        None,
    ),
)

# Per kind: what one unit of work is (for CPU per unit), its label, and how long a run lasted (for % of a core).
_UNIT: dict[str, tuple[Callable[[Run], float], str, Callable[[Run], float]]] = {
    "bulk": (lambda r: r["bytes"] / 1e9, "CPU s/GB", lambda r: r["seconds"]),
    "rr": (lambda r: r["n"] / 1e6, "CPU µs/round trip", lambda r: r["wall"]),
    "rate": (lambda r: r["ops"] / 1e3, "CPU ms/tunnel", lambda r: r["seconds"]),
}


def _by_rep(runs: list[Run], f: Callable[[Run], float]) -> dict[int, float]:
    return {r["rep"]: f(r) for r in runs}


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _three(xs: list[float]) -> str:
    if not xs:
        return "—"
    return " / ".join(_fmt(v) for v in (min(xs), statistics.median(xs), max(xs)))


def paired(runs: Runs, pair: str, base: str, m: Metric) -> list[float]:
    """Per-repeat ratios pair/base of one metric (only repeats where both ran)."""
    a = _by_rep(runs.get(pair, {}).get(m.kind, []), m.value)
    b = _by_rep(runs.get(base, {}).get(m.kind, []), m.value)
    return [a[k] / b[k] for k in sorted(a.keys() & b.keys()) if b[k] > 0]


def _ratio(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{statistics.median(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]" if len(xs) > 1 else f"{xs[0]:.2f}x"


def _met(xs: list[float], m: Metric) -> str:
    if not xs or m.target is None:
        return ""
    med = statistics.median(xs)
    ok = med >= m.target if m.higher_is_better else med <= m.target
    return "met" if ok else "**not met**"


def _median(runs: Runs, pair: str, m: Metric) -> str:
    vals = [m.value(r) for r in runs.get(pair, {}).get(m.kind, [])]
    return _fmt(statistics.median(vals)) if vals else "—"


def summary(runs: Runs, base: str, targets: bool = True, subject: str = "ours") -> list[str]:
    goal = {True: "≥", False: "≤"}
    lines = [f"| metric | {subject} | {base} | {subject}/{base} (median [min-max]) | target | |", "|---" * 6 + "|"]
    for m in METRICS:
        xs = paired(runs, subject, base, m)
        if not runs[subject].get(m.kind) or not runs[base].get(m.kind) or not xs or xs[0] != xs[0]:
            continue  # not run, or not recorded (NaN)
        target = f"{goal[m.higher_is_better]} {m.target:.1f}x" if m.target and targets else "(info)"
        met = _met(xs, m) if targets else ""
        unit = f" ({m.unit})" if m.unit else ""
        lines.append(f"| {m.name}{unit} | {_median(runs, subject, m)} | {_median(runs, base, m)} | {_ratio(xs)} "
                     f"| {target} | {met} |")  # fmt: skip
    return lines


def _cpu_cells(runs: list[Run], kind: str) -> str:
    unit, _, wall = _UNIT[kind]
    cells = []
    for role in (*ROLES, "total"):
        per, core = [], []
        for r in runs:
            secs = sum(r["cpu"].values()) if role == "total" else r["cpu"].get(role, float("nan"))
            per.append(secs / unit(r))
            core.append(100 * secs / wall(r))
        med = statistics.median(per)
        cells.append(f"{med:.3g} ({statistics.median(core):.0f}%)" if med == med else "—")
    return " | ".join(cells)


def details(runs: Runs, labels: dict[str, str]) -> list[str]:
    out: list[str] = []
    for kind in KINDS:
        ms = [m for m in METRICS if m.kind == kind and m.unit in ("MB/s", "µs", "/s")]
        if not any(runs[p].get(kind) for p in runs):
            continue
        _, per, _ = _UNIT[kind]
        head = " | ".join(f"{m.name} ({m.unit}) min / median / max | vs Envoy" for m in ms)
        roles = " | ".join(ROLES)
        out += ["", f"**{kind}** — {per} by process (its median share of one core in brackets)", "",
                f"| pair | {head} | {roles} | total |", "|---" * (2 + 2 * len(ms) + len(ROLES)) + "|"]  # fmt: skip
        for pair, label in labels.items():
            rs = runs[pair].get(kind, [])
            if not rs:
                continue
            cells = " | ".join(f"{_three([m.value(r) for r in rs])} | {_ratio(paired(runs, pair, 'envoy', m))}"
                               for m in ms)  # fmt: skip
            out.append(f"| {label} | {cells} | {_cpu_cells(rs, kind)} |")
    return out


def readme_table(runs: Runs) -> str:
    """The README's comparison: one row per target metric, ours and Envoy (medians), ratios against Envoy's
    defaults and the matched variant, the target and whether the median ratio meets it."""
    goal = {True: "≥", False: "≤"}
    lines = ["| metric | ours | Envoy | ours/Envoy | ours/Envoy matched | target | |", "|---|---|---|---|---|---|---|"]
    for m in METRICS:
        xs = paired(runs, "ours", "envoy", m)
        if not xs or xs[0] != xs[0]:
            continue
        matched = _ratio(paired(runs, "ours", "envoy-matched", m)) if "envoy-matched" in runs else "—"
        target = f"{goal[m.higher_is_better]} {m.target:.1f}x" if m.target else "—"
        unit = f" {m.unit}" if m.unit else ""
        lines.append(f"| {m.name} | {_median(runs, 'ours', m)}{unit} | {_median(runs, 'envoy', m)}{unit} | "
                     f"{_ratio(xs)} | {matched} | {target} | {_met(xs, m).replace('**', '')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def report(runs: Runs, labels: dict[str, str], title: str) -> str:
    lines = [f"### {title}", ""]
    for base in ("envoy", "envoy-matched"):
        if "ours" in runs and base in runs:
            what = "Envoy defaults" if base == "envoy" else "Envoy with windows and buffers matched to ours"
            lines += ["", f"**ours vs {what}** (same run, paired by repeat)", "", *summary(runs, base)]
    if "ours-native" in runs and "envoy" in runs:
        lines += ["", "**ours on the native HTTP/2 engine vs Envoy defaults** (same run)", "",
                  *summary(runs, "envoy", subject="ours-native")]  # fmt: skip
    if "ours" in runs and "ours-native" in runs:
        lines += ["", "**ours-native vs ours** (the native engine vs h2, same run)", "",
                  *summary(runs, "ours", subject="ours-native", targets=False)]  # fmt: skip
    if "ours" in runs and "ours-base" in runs:
        lines += ["", "**ours vs ours-base** (this tree vs `--base-tree`, same run)", "",
                  *summary(runs, "ours-base", targets=False)]  # fmt: skip
    lines += details(runs, labels)
    return "\n".join(lines) + "\n"
