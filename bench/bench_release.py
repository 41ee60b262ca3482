"""Setup, engine and release overhead on the local target, with the real engine and real servers.

Prints one line per measurement (median, min, max, n) and the ratio against the no-op `pulumi up` measured in
the same run. Results are recorded in BENCHMARKS.md. Usage:

    .venv/bin/python bench/bench_release.py [--runs 5] [--promotions 3] [--cold]

- warm setup: `scripts/setup.sh` when everything is installed;
- no-op `pulumi up` (the baseline): a promoted stack, nothing changed;
- preview with cached gates: the candidate's gates already ran once;
- full promotion with zero bake: steps 5/25/50/100, alternating v1 and v2 as candidate (the first two gate
  their pair, later ones reuse the cached gates); the bake (collecting the pairs the judge needs) and the rest,
  engine, program and deploy overhead, per step;
- --cold: setup in a fresh clone with empty Go build and module caches and no pip cache (several minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pulumi import automation as auto

from automation.engine import PROJECT_DIR, select_stack
from automation.sandbox import copy_program, sample_config
from components.targets.local import LocalTarget
from serving.sample_models import build_sample_models
from serving.sample_windows import build_sample_windows

STEPS = [5, 25, 50, 100]


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def report(name: str, samples: list[float], baseline: float | None = None) -> float:
    median = statistics.median(samples)
    ratio = f"  ratio vs no-op up {median / baseline:.2f}x" if baseline else ""
    spread = f"min {min(samples):7.2f}s  max {max(samples):7.2f}s  n={len(samples)}"
    print(f"{name:<40} median {median:7.2f}s  {spread}{ratio}", flush=True)
    return median


def cold_setup() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(PROJECT_DIR), str(clone)], check=True)
        env = {**os.environ, "GOCACHE": f"{tmp}/gocache", "GOMODCACHE": f"{tmp}/gomod", "PIP_NO_CACHE_DIR": "1"}
        return timed(lambda: subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, check=True), 1)


class Bench:
    """A copy of the program on a temp backend with the sample models."""

    def __init__(self, tmp: Path, backend: dict[str, str] | None = None) -> None:
        """``backend``: the environment of another backend (an ``s3://`` URL and its credentials); by default a
        ``file://`` directory in ``tmp``."""
        self.models = build_sample_models(tmp / "sample")
        self.windows = build_sample_windows(self.models.holdout.parent)
        self.project = copy_program(tmp / "project")
        (tmp / "state").mkdir()
        self.env = {**os.environ, "PULUMI_BACKEND_URL": (tmp / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "bench"}
        self.env.update(backend or {})
        self.stack = select_stack("bench", work_dir=self.project, env=self.env)

    def configure(self, variant: str) -> None:
        config = sample_config(self.models, self.windows, variant)
        config["canary"] = {"steps": STEPS, "bake_seconds": 0, "min_pairs": 300, "synthetic_rps": 100}
        self.stack.set_all_config(
            {f"mlrelease:{key}": auto.ConfigValue(value=json.dumps(value)) for key, value in config.items()}
        )

    def outputs(self, suffix: str) -> dict:
        resources = self.stack.export_stack().deployment["resources"]
        return next(r["outputs"] for r in resources if r["urn"].endswith(f"::{suffix}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--promotions", type=int, default=4)
    parser.add_argument("--cold", action="store_true", help="also time a cold setup in a fresh clone")
    args = parser.parse_args()

    if args.cold:
        report("cold setup (fresh clone, empty caches)", cold_setup())
    warm = timed(
        lambda: subprocess.run(["bash", "scripts/setup.sh"], cwd=PROJECT_DIR, check=True, capture_output=True),
        args.runs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.configure("incumbent")
            bench.stack.up()
            uncached, cached, bakes, overheads = [], [], [], []
            for index in range(args.promotions):
                bench.configure("good" if index % 2 == 0 else "incumbent")
                started = time.perf_counter()
                bench.stack.up()
                wall = time.perf_counter() - started
                bake = sum(v["bake_seconds"] for v in bench.outputs("release-checkpoint")["verdicts"])
                bakes.append(bake)
                if index < 2:  # the first time each (candidate, incumbent) pair is gated
                    uncached.append(wall)
                else:  # gates cached: what is left beside the bakes is engine, program and deploy overhead
                    cached.append(wall)
                    overheads.append((wall - bake) / len(STEPS))
            noop = report("no-op pulumi up (baseline)", timed(bench.stack.up, args.runs))
            report("warm setup", warm, noop)
            report("preview with cached gates", timed(bench.stack.preview, args.runs), noop)
            report("full promotion, 4 steps, zero bake", uncached, noop)
            report("  the same with cached gates", cached, noop)
            report("  bake per promotion (pairs for the judge)", bakes)
            report("  engine + program overhead per step", overheads)
        finally:
            LocalTarget.for_stack(bench.project, "bench").destroy()


if __name__ == "__main__":
    main()
