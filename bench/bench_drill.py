"""Drill recovery on the local target: fault -> watcher detection -> rollback -> converged, per fault kind.

Usage: ``.venv/bin/python bench/bench_drill.py [--runs 3]``. On a copy of the program with a temp backend and
the sample models, each run promotes v2 over v1 (v1 warm), then runs ``automation.drill.drill`` for one fault
kind; the watch config is the documented default (10 s window, 1 s interval, 50 samples). Prints per fault
kind the median (min, max) of detection, traffic (rollback fired -> traffic on v1), converge and recovery
seconds, and the ratio of recovery against the baseline measured in the same run: an operator's
``rollback`` with no detection at all (what recovery costs beyond noticing). Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from automation.drill import FAULTS, drill
from automation.engine import select_stack
from automation.release import rollback
from automation.sandbox import sample_config, sandbox
from automation.stack import StackContext
from components.targets.local import LocalTarget

STACK = "drill"
CANARY = {"steps": [5, 50, 100], "min_pairs": 120, "max_bake_seconds": 60, "synthetic_rps": 80}
GATES = {"latency": {"p99_ms": 250, "p50_ms": 150, "requests": 600}, "memory": {"max_mb": 640}}


def quiet(_line: str) -> None:
    """Progress lines are not part of the measurement."""


def line(name: str, samples: list[float], baseline: float | None = None) -> None:
    median = statistics.median(samples)
    ratio = f"  ratio vs operator rollback {median / baseline:.2f}x" if baseline else ""
    spread = f"min {min(samples):6.2f}s  max {max(samples):6.2f}s  n={len(samples)}"
    print(f"{name:<34} median {median:6.2f}s  {spread}{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models, windows, project, env = sandbox(Path(tmp))
        select_stack(STACK, work_dir=project, env=env)  # create it
        ctx = StackContext(STACK, project_dir=project, env=env)

        def release(variant: str) -> None:
            config = {**sample_config(models, windows, variant), "canary": CANARY, "gates": GATES}
            ctx.write_config(config)
            ctx.up(f"bench: release {variant}")

        try:
            release("incumbent")
            operator = []
            for _ in range(args.runs):
                release("good")
                started = time.perf_counter()
                rollback(ctx, "bench: operator baseline", quiet)
                operator.append(time.perf_counter() - started)
            baseline = statistics.median(operator)
            line("operator rollback (baseline)", operator)
            for fault in FAULTS:
                reports = []
                for _ in range(args.runs):
                    release("good")
                    report = drill(ctx, fault, 300.0, quiet)  # type: ignore[arg-type]
                    if report.outcome != "recovered":
                        raise SystemExit(f"drill {fault} failed: {report.problem}")
                    reports.append(report)
                line(f"{fault}: detection", [r.detection_seconds for r in reports])
                line(f"{fault}: traffic after firing", [r.traffic_seconds for r in reports])
                line(f"{fault}: converge", [r.converge_seconds for r in reports])
                line(f"{fault}: recovery", [r.recovery_seconds for r in reports], baseline)
        finally:
            LocalTarget.for_stack(project, STACK).destroy()


if __name__ == "__main__":
    main()
