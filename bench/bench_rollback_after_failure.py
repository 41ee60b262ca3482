"""Rollback after a failed release attempt: how long until all traffic is on the verified previous version.

Usage: ``.venv/bin/python bench/bench_rollback_after_failure.py [--runs 3]``. On a copy of the program with a
temp backend and the sample models, each run releases v1 then v2 (v2 live, v1 the verified previous), lets a
divergent candidate fail its canary (``promote`` outcome ``rolled_back``), then runs ``mlrelease rollback``'s
``rollback`` on a stack context the engine has not opened yet, as the command does, and reads its
``traffic_seconds`` (rollback start -> 100 % on v1). Two stacks in the same run:

- ``standby``: the documented default (``rollback.window_seconds`` 3600): v1 stays up through the failed
  attempt as the standby, so traffic moves in one router call;
- ``cold`` (the baseline): ``rollback.window_seconds`` 0, so no previous version is kept warm at all and the
  rollback has to start v1's server first (what every rollback after a failed attempt cost before the standby).

``--baseline-runs`` (default 1) bounds the cold stack's runs: each costs two promotions. Prints the median
(min, max) per stack and the ratio. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from automation.engine import select_stack
from automation.release import promote, rollback
from automation.sandbox import sample_config, sandbox
from automation.stack import StackContext
from components.targets.local import LocalTarget

CANARY = {"steps": [5, 50, 100], "min_pairs": 120, "max_bake_seconds": 60, "synthetic_rps": 80}
# The release flow's roomy latency bounds (tests/engine/conftest.py says why): this measures the rollback.
GATES = {"latency": {"p99_ms": 10_000, "p50_ms": 3_000, "requests": 600, "max_ratio": 10}, "memory": {"max_mb": 640}}
WINDOWS = {"standby": 3600.0, "cold": 0.0}


def quiet(_line: str) -> None:
    """Progress lines are not part of the measurement."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models, windows, project, env = sandbox(Path(tmp))
        seconds: dict[str, list[float]] = {name: [] for name in WINDOWS}
        try:
            for name, window in WINDOWS.items():
                select_stack(name, work_dir=project, env=env)
                ctx = StackContext(name, project_dir=project, env=env)
                for _ in range(args.runs if name == "standby" else args.baseline_runs):
                    for variant in ("incumbent", "good"):
                        config = {**sample_config(models, windows, variant), "canary": CANARY, "gates": GATES}
                        ctx.write_config({**config, "rollback": {"window_seconds": window}})
                        ctx.up(f"bench: release {variant}")
                    failed = promote(ctx, models.models["divergent"].model_dir, None, quiet)
                    if failed.outcome != "rolled_back":
                        raise SystemExit(f"the divergent candidate was {failed.outcome}, expected rolled_back")
                    fresh = StackContext(name, project_dir=project, env=env, select=False)  # as the command's
                    report = rollback(fresh, "bench: rollback after a failed attempt", quiet)
                    if report.traffic_seconds is None:
                        raise SystemExit("the rollback did not move traffic first")
                    seconds[name].append(report.traffic_seconds)
                    print(f"{name}: traffic on v1 after {report.traffic_seconds:.3f} s", flush=True)
        finally:
            for name in WINDOWS:
                LocalTarget.for_stack(project, name).destroy()
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        for name, values in seconds.items():
            spread = f"min {min(values):.3f}s  max {max(values):.3f}s  n={len(values)}"
            print(f"{name:<8} median {medians[name]:.3f}s  {spread}")
        print(f"ratio cold / standby: {medians['cold'] / medians['standby']:.0f}x")


if __name__ == "__main__":
    main()
