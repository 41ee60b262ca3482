"""``mlrelease promote`` on an ``s3://`` backend (a local SeaweedFS) against the same on ``file://``, in one run.

    .venv/bin/python bench/bench_backends.py [--promotions 4] [--runs 5]

Per backend: a stack of the sample models, v1 released, then ``--promotions`` whole ``mlrelease promote``
processes alternating v2 and v1 (steps 5/25/50/100, zero bake; the first two gate their pair, the rest reuse the
cached gates, so they time the engine, the lock and the state reads and writes), then ``--runs`` no-op ``pulumi
up``. Printed: medians and the s3/file ratio of each. The store runs on this machine, so the ratio is the cost of
the S3 protocol and the object store, not of a network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi import automation as auto

from automation.engine import VENV_DIR
from automation.s3server import start_s3_server, stop_s3_server
from bench.bench_release import Bench, timed
from components.targets.local import LocalTarget

GATES = {
    "latency": {"p99_ms": 10_000, "p50_ms": 3_000, "requests": 600, "max_ratio": 10},
    "memory": {"max_mb": 640},
}


def measure(tmp: Path, backend: dict[str, str] | None, promotions: int, runs: int) -> dict[str, list[float]]:
    bench = Bench(tmp, backend)
    try:
        bench.configure("incumbent")
        # The gates pass equal versions on a loaded 2-core machine: this times the release, not the latency gate.
        bench.stack.set_config("mlrelease:gates", auto.ConfigValue(value=json.dumps(GATES)))
        bench.stack.up()
        promote = []
        for index in range(promotions):
            variant = "good" if index % 2 == 0 else "incumbent"
            model = str(bench.models.models[variant].model_dir)
            argv = [str(VENV_DIR / "bin" / "mlrelease"), "promote", "--stack", "bench", "--model", model]
            started = time.perf_counter()
            run = subprocess.run([*argv, "--project-dir", str(bench.project)], env=bench.env, capture_output=True)
            if run.returncode != 0:
                raise SystemExit(f"promote exited {run.returncode}: {run.stderr.decode()[-2000:]}")
            promote.append(time.perf_counter() - started)
        noop = timed(bench.stack.up, runs)
        return {"promote, gated (first two)": promote[:2], "promote, cached gates": promote[2:], "no-op up": noop}
    finally:
        LocalTarget.for_stack(bench.project, "bench").destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        on_file = measure(root / "file", None, args.promotions, args.runs)
        server = start_s3_server(root / "s3")
        try:
            backend = {**server.env(), "PULUMI_BACKEND_URL": server.backend_url()}
            on_s3 = measure(root / "s3-project", backend, args.promotions, args.runs)
        finally:
            stop_s3_server(root / "s3")
    for name, samples in on_file.items():
        file_median, s3_median = statistics.median(samples), statistics.median(on_s3[name])
        print(
            f"{name:<28} file:// median {file_median:6.2f}s (n={len(samples)})  s3:// median {s3_median:6.2f}s"
            f" (min {min(on_s3[name]):.2f} max {max(on_s3[name]):.2f})  ratio s3/file {s3_median / file_median:.2f}"
        )


if __name__ == "__main__":
    main()
