"""Benchmarks for verification/: prints numbers, never asserts them (targets live in BENCHMARKS.md).

    .venv/bin/python bench/bench_verification.py [--rows 1000000] [--repeats 3] [--no-evidently]

Each section reports the median of several runs of our code and of a baseline measured in the same
run, and their ratio:
  1. drift, ROWS x (50 numeric + 10 categorical), reference vs current window of ROWS rows each;
     baselines: plain scipy per feature (ks_2samp, chi2_contingency, np.quantile/histogram PSI) and,
     when bench/.venv-evidently exists, Evidently's DataDriftPreset on the same data (subprocess);
  2. paired comparison of 1,000,000 pairs; baseline: the same statistics via scipy (spearmanr,
     np.quantile, rankdata);
  3. Mann-Whitney judge, 10,000 vs 10,000; baseline: R's wilcox.test interval by root-finding
     (brentq over rank sums, as Kayenta does) plus scipy.stats.mannwhitneyu;
  4. sequential comparison: mean pairs to fail a candidate whose true disagreement rate is twice the
     tolerance, against the pairs a fixed-horizon exact binomial test with the same error rates needs.
Set up the Evidently venv with:
    python3 -m venv bench/.venv-evidently
    bench/.venv-evidently/bin/pip install evidently==0.7.23 pandas==2.2.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verification.comparison import SequentialComparison, compare_predictions, fixed_horizon_pairs
from verification.drift import dataset_drift
from verification.judge import mann_whitney

HERE = Path(__file__).resolve().parent
EVIDENTLY_PY = HERE / ".venv-evidently" / "bin" / "python"
N_NUMERIC, N_CATEGORICAL = 50, 10


CPU_TIMES: dict[str, float] = {}


def median_time(fn: Callable[[], Any], repeats: int, label: str = "") -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one warm-up call) and the last result.

    The median process CPU time (all threads) is kept in CPU_TIMES[label]: on a shared machine the
    wall time includes waiting for other processes, the CPU time does not.
    """
    result = fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if label:
        CPU_TIMES[label] = statistics.median(cpu)
    return statistics.median(times), result


def make_drift_data(rows: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    levels = np.array([f"level_{i:02d}" for i in range(20)])
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    raw: dict[str, np.ndarray] = {}
    for i in range(N_NUMERIC):
        shift = 0.6 if i % 10 == 0 else 0.0  # five features really move (PSI ~0.35)
        ref[f"x{i:02d}"] = rng.normal(size=rows)
        cur[f"x{i:02d}"] = rng.normal(shift, 1.0, size=rows)
    weights = np.linspace(1, 3, 20)
    p = weights / weights.sum()
    q = p[::-1]  # the first categorical feature moves
    for i in range(N_CATEGORICAL):
        ref_codes = rng.choice(20, size=rows, p=p)
        cur_codes = rng.choice(20, size=rows, p=q if i == 0 else p)
        ref[f"c{i:02d}"] = pd.Series(pd.Categorical.from_codes(ref_codes, categories=levels))
        cur[f"c{i:02d}"] = pd.Series(pd.Categorical.from_codes(cur_codes, categories=levels))
        raw[f"ref:c{i:02d}"], raw[f"cur:c{i:02d}"] = ref_codes, cur_codes
    for name in ref:
        if name.startswith("x"):
            raw[f"ref:{name}"], raw[f"cur:{name}"] = ref[name], cur[name]
    return ref, cur, raw


def scipy_drift(ref: dict[str, Any], cur: dict[str, Any]) -> int:
    """Plain per-feature scipy baseline: ks_2samp / chi2_contingency and a quantile-binned PSI."""
    drifted = 0
    for name in ref:
        if name.startswith("x"):
            a, b = ref[name], cur[name]
            pval = stats.ks_2samp(a, b).pvalue
            edges = np.quantile(a, np.linspace(0, 1, 11))
            edges[0], edges[-1] = -np.inf, np.inf
            ra = np.histogram(a, edges)[0] / a.size
            rb = np.histogram(b, edges)[0] / b.size
        else:
            ca = np.bincount(ref[name].cat.codes.to_numpy(), minlength=20)
            cb = np.bincount(cur[name].cat.codes.to_numpy(), minlength=20)
            pval = stats.chi2_contingency(np.vstack((ca, cb)))[1]
            ra, rb = ca / ca.sum(), cb / cb.sum()
        ra, rb = np.maximum(ra, 1e-4), np.maximum(rb, 1e-4)
        psi = float(np.sum((rb - ra) * np.log(rb / ra)))
        drifted += bool(pval < 0.05 / len(ref) and psi > 0.25)
    return drifted


def evidently_drift(raw: dict[str, np.ndarray], repeats: int) -> dict[str, Any] | None:
    if not EVIDENTLY_PY.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "drift.npz")
        np.savez(path, **raw)
        proc = subprocess.run(
            [str(EVIDENTLY_PY), str(HERE / "bench_verification_evidently.py"), path, str(repeats)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if proc.returncode != 0:
        print(f"  evidently failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def bench_drift(rows: int, repeats: int, with_evidently: bool) -> None:
    print(f"\n[1] drift: {rows} rows x ({N_NUMERIC} numeric + {N_CATEGORICAL} categorical), both windows")
    ref, cur, raw = make_drift_data(rows)
    ours, report = median_time(lambda: dataset_drift(ref, cur), repeats, "drift")
    ours_1, _ = median_time(lambda: dataset_drift(ref, cur, workers=1), repeats, "drift1")
    print(
        f"  verification.dataset_drift: {ours:.3f} s median wall, {CPU_TIMES['drift']:.3f} s CPU"
        f" (1 thread: {ours_1:.3f} s wall, {CPU_TIMES['drift1']:.3f} s CPU);"
        f" drifted {len(report.drifted_features)}: {report.drifted_features}"
    )
    base, base_drifted = median_time(lambda: scipy_drift(ref, cur), max(1, repeats // 2), "scipy")
    print(
        f"  plain scipy baseline:       {base:.3f} s median wall, {CPU_TIMES['scipy']:.3f} s CPU;"
        f" drifted {base_drifted}"
    )
    print(f"  ratio scipy / ours:         {base / ours:.1f}x wall, {CPU_TIMES['scipy'] / CPU_TIMES['drift']:.1f}x CPU")
    if with_evidently:
        ev = evidently_drift(raw, max(1, repeats // 2))
        if ev is None:
            print("  Evidently: not available (create bench/.venv-evidently, see module docstring)")
        else:
            ev_time = statistics.median(ev["times"])
            print(
                f"  Evidently DataDriftPreset:  {ev_time:.3f} s median of {len(ev['times'])};"
                f" result {ev['drifted_summary']}"
            )
            print(f"  ratio Evidently / ours:     {ev_time / ours:.1f}x")


def scipy_compare(inc: np.ndarray, cand: np.ndarray) -> float:
    diff = cand - inc
    flips = np.mean((inc >= 0.5) != (cand >= 0.5))
    np.quantile(np.abs(diff), [0.95, 0.99])
    diff.mean()
    diff.std()
    stats.spearmanr(inc, cand)
    return float(flips)


def bench_comparison(repeats: int) -> None:
    n = 1_000_000
    print(f"\n[2] paired comparison: {n} pairs")
    rng = np.random.default_rng(1)
    inc = rng.uniform(size=n)
    cand = np.clip(inc + rng.normal(0, 0.005, size=n), 0, 1)
    ours, report = median_time(lambda: compare_predictions(inc, cand), repeats, "compare")
    base, _ = median_time(lambda: scipy_compare(inc, cand), repeats, "scipy_compare")
    print(
        f"  verification.compare_predictions: {ours * 1e3:.1f} ms median wall,"
        f" {CPU_TIMES['compare'] * 1e3:.1f} ms CPU; passed={report.passed}"
    )
    print(
        f"  scipy baseline (spearmanr + quantiles): {base * 1e3:.1f} ms median wall,"
        f" {CPU_TIMES['scipy_compare'] * 1e3:.1f} ms CPU; ratio {base / ours:.1f}x wall,"
        f" {CPU_TIMES['scipy_compare'] / CPU_TIMES['compare']:.1f}x CPU"
    )


def r_style_wilcox_interval(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """R's wilcox.test asymptotic interval by root-finding rank sums (Kayenta's approach)."""
    n, m = len(x), len(y)
    z = stats.norm.ppf(0.5 + confidence / 2)

    def wdiff(d: float, zq: float) -> float:
        ranks = stats.rankdata(np.concatenate((x - d, y)))
        _, ties = np.unique(ranks, return_counts=True)
        dz = ranks[:n].sum() - n * (n + 1) / 2 - n * m / 2
        sigma = np.sqrt(n * m / 12 * ((n + m + 1) - np.sum(ties**3 - ties) / ((n + m) * (n + m - 1))))
        return float((dz - np.sign(dz) * 0.5) / sigma - zq)

    lo, hi = x.min() - y.max(), x.max() - y.min()
    roots = [optimize.brentq(wdiff, lo, hi, args=(zq,), xtol=1e-4) for zq in (z, -z, 0.0)]
    stats.mannwhitneyu(x, y, method="asymptotic")
    return roots[0], roots[1], roots[2]


def bench_judge(repeats: int) -> None:
    print("\n[3] Mann-Whitney judge: 10,000 vs 10,000")
    rng = np.random.default_rng(2)
    base = rng.lognormal(3, 0.5, size=10_000)
    canary = rng.lognormal(3.02, 0.5, size=10_000)
    ours, result = median_time(lambda: mann_whitney(base, canary), repeats, "judge")
    ref, roots = median_time(lambda: r_style_wilcox_interval(canary, base, 0.98), max(3, repeats // 4), "rstyle")
    print(
        f"  verification.mann_whitney: {ours * 1e3:.1f} ms median wall,"
        f" {CPU_TIMES['judge'] * 1e3:.1f} ms CPU; {result.classification},"
        f" interval [{result.ci_lower:.5f}, {result.ci_upper:.5f}]"
    )
    print(f"  R-style root-finding baseline: {ref * 1e3:.1f} ms median; interval [{roots[0]:.5f}, {roots[1]:.5f}]")
    print(f"  ratio baseline / ours: {ref / ours:.1f}x wall, {CPU_TIMES['rstyle'] / CPU_TIMES['judge']:.1f}x CPU")


def bench_sequential(runs: int) -> None:
    tol, batch = 0.01, 100
    print(
        f"\n[4] sequential comparison: tolerance {tol}, true disagreement {2 * tol}, batches of {batch},"
        f" alpha = beta = 0.05, {runs} runs"
    )
    fixed = fixed_horizon_pairs(tol, 2 * tol, 0.05, 0.05)
    for label, kwargs in (
        ("mixture over 1.5-5x tolerance (default)", {}),
        ("point alternative at 2x tolerance (SPRT)", {"fail_alternatives": (2.0,)}),
    ):
        pairs, fails = [], 0
        for seed in range(runs):
            rng = np.random.default_rng(10_000 + seed)
            seq = SequentialComparison(max_disagreement=tol, **kwargs)
            while True:
                inc = rng.uniform(size=batch)
                cand = np.where(rng.uniform(size=batch) < 2 * tol, 1 - inc, inc)
                decision = seq.update(inc, cand)
                if decision.decision != "continue":
                    break
            pairs.append(decision.pairs)
            fails += decision.decision == "fail"
        mean = float(np.mean(pairs))
        print(
            f"  {label}: mean {mean:.0f} pairs to decide (median {np.median(pairs):.0f}),"
            f" failed {fails}/{runs}; ratio to fixed horizon {mean / fixed:.2f}"
        )
    false_fail = 0
    cap = 20_000
    for seed in range(runs):
        rng = np.random.default_rng(20_000 + seed)
        seq = SequentialComparison(max_disagreement=tol)
        while True:
            inc = rng.uniform(size=500)
            decision = seq.update(inc, np.where(rng.uniform(size=500) < tol, 1 - inc, inc))
            if decision.decision != "continue" or decision.pairs >= cap:
                break
        false_fail += decision.decision == "fail"
    print(
        f"  fixed-horizon exact binomial test needs {fixed} pairs;"
        f" false-fail rate at a true rate equal to the tolerance (within {cap} pairs): {false_fail}/{runs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--sequential-runs", type=int, default=200)
    parser.add_argument("--only", choices=["drift", "comparison", "judge", "sequential"], default=None)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()},"
        f" numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    sections = {
        "drift": lambda: bench_drift(args.rows, args.repeats, not args.no_evidently),
        "comparison": lambda: bench_comparison(max(5, args.repeats)),
        "judge": lambda: bench_judge(max(11, args.repeats)),
        "sequential": lambda: bench_sequential(args.sequential_runs),
    }
    for name, run in sections.items():
        if args.only in (None, name):
            run()


if __name__ == "__main__":
    main()
