"""Model-server cold start: ``start_model_server`` (digest check, supervisor, readiness) against bare
``mlserver start`` with the same settings, interleaved in one run, plus stop time and resident memory.

Usage: python bench/bench_modelserver.py [--runs 5] [--variant incumbent]
Cold start is the wall time from the call until the model answers ready. The baseline is MLServer alone
(``mlserver start DIR`` with the same environment, polled every 10 ms); the ratio is ours / baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving import supervisor
from serving.modelserver import _mlserver_env, is_ready, start_model_server
from serving.sample_models import build_sample_models
from serving.wait import wait_until


def bare_mlserver(model_dir: Path, work: Path) -> float:
    """Seconds until a bare ``mlserver start`` is ready (baseline)."""
    http, grpc = supervisor.free_port(), supervisor.free_port()
    env = {**os.environ, **_mlserver_env(http, grpc, work)}
    mlserver = str(Path(sys.executable).with_name("mlserver"))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [mlserver, "start", str(model_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{http}"
        wait_until(lambda: is_ready(url, "credit-default"), 120, "bare mlserver", 0.01, 0.01)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)


def ours(model_dir: Path, sha256: str, run_dir: Path) -> tuple[float, float, int]:
    """Cold start seconds, stop seconds and RSS bytes of the process tree for ``start_model_server``."""
    started = time.perf_counter()
    handle = start_model_server(model_dir, sha256, run_dir)
    cold = time.perf_counter() - started
    root = psutil.Process(handle.pid)
    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    started = time.perf_counter()
    supervisor.stop(handle.state_path)
    return cold, time.perf_counter() - started, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variant", default="incumbent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-modelserver-") as tmp:
        root = Path(tmp)
        model = build_sample_models(root / "models").models[args.variant]
        bare_s, cold_s, stop_s, rss = [], [], [], []
        for run in range(args.runs):
            bare_s.append(bare_mlserver(model.model_dir, root / "bare"))
            cold, stop, resident = ours(model.model_dir, model.sha256, root / f"run-{run}")
            cold_s.append(cold)
            stop_s.append(stop)
            rss.append(resident)
            mib = resident / 2**20
            print(f"run {run}: bare {bare_s[-1]:.3f}s  ours {cold:.3f}s  stop {stop:.3f}s  rss {mib:.0f} MiB")
    bare, cold = statistics.median(bare_s), statistics.median(cold_s)
    print(f"machine: {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"model: {args.variant} ({model.version}), runs: {args.runs}")
    print(f"cold start median: ours {cold:.3f}s  bare mlserver {bare:.3f}s  ratio {cold / bare:.2f}")
    mib = statistics.median(rss) / 2**20
    print(f"stop median: {statistics.median(stop_s):.3f}s; resident after ready: {mib:.0f} MiB")


if __name__ == "__main__":
    main()
