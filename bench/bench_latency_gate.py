"""How the latency gate reads an equally fast candidate, and a slower one, against the incumbent on this machine.

The gate measures candidate and incumbent interleaved in one run and bounds the ratio of their p50 and p99
(``verification.performance.latency_ratio_gate``). A release tool must not block a candidate as fast as the
incumbent because the runner is noisy: this prints, per run, the absolute bounds of both versions and the ratio
estimates and upper bounds, for the `good` sample (same model, retrained) and the `slow` one (+15 ms per call),
at the staging defaults (1000 requests at 100 rps after 100 warm-up requests), and how many runs the default
``max_ratio`` passes.

    .venv/bin/python bench/bench_latency_gate.py [--runs 5] [--background-load 0]

``--background-load N`` runs N busy-loop processes beside it (a CI runner shared with other jobs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.gate_inputs import DriftFiles, GateInputs, ModelRef
from components.gates import run_gates
from components.spec import GatesSpec, LatencyGate
from serving.sample_models import build_sample_models
from serving.sample_windows import build_sample_windows


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--background-load", type=int, default=0, help="busy processes beside the measurement")
    parser.add_argument("--variants", default="good,slow")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        root = Path(tmp)
        samples = build_sample_models(root / "samples")
        windows = build_sample_windows(samples.holdout.parent)

        def ref(variant: str) -> ModelRef:
            m = samples.models[variant]
            return ModelRef(name=m.name, version=m.version, model_dir=m.model_dir, sha256=m.sha256)

        default = LatencyGate()
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(args.background_load)]
        for proc in spinners:
            proc.start()
        try:
            print(
                f"{'variant':<6} {'run':>3} {'cand p99 ub':>11} {'inc p99 ub':>10} {'p50 ratio':>15} {'p99 ratio':>15}"
            )
            for variant in args.variants.split(","):
                passed, p99_upper = 0, []
                for run in range(args.runs):
                    inputs = GateInputs(
                        candidate=ref(variant),
                        incumbent=ref("incumbent"),
                        holdout=samples.holdout,
                        holdout_sha256=samples.holdout_sha256,
                        drift=DriftFiles(reference=windows.reference, current=windows.current),
                        # Absolute limits out of the way: only the ratio is under study here.
                        gates=GatesSpec(latency=LatencyGate(p99_ms=10_000, p50_ms=10_000)),
                    )
                    evidence = run_gates(inputs, work_dir=root / "work", cache_dir=root / f"cache-{variant}-{run}")
                    o = evidence.gates["latency"].observed
                    ratio_ok = o["p99_ratio_upper"] <= default.max_ratio and o["p50_ratio_upper"] <= default.max_ratio
                    passed += ratio_ok
                    p99_upper.append(o["p99_ratio_upper"])
                    print(
                        f"{variant:<6} {run:>3} {o['p99_upper_ms']:>9.1f}ms {o['incumbent_p99_upper_ms']:>8.1f}ms"
                        f" {o['p50_ratio']:>6.2f} (<={o['p50_ratio_upper']:>5.2f})"
                        f" {o['p99_ratio']:>6.2f} (<={o['p99_ratio_upper']:>5.2f})"
                    )
                print(
                    f"{variant}: max_ratio {default.max_ratio} passes {passed}/{args.runs} runs;"
                    f" median p99 ratio upper bound {statistics.median(p99_upper):.2f}"
                )
        finally:
            stop.set()
            for proc in spinners:
                proc.join()


if __name__ == "__main__":
    main()
