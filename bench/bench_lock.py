"""The release lock on ``s3://`` (the local SeaweedFS) against the ``flock`` of ``file://``, and take-over time.

    .venv/bin/python bench/bench_lock.py [--runs 20] [--takeovers 5] [--lease 5]

Printed, each a median:
- take + release of an uncontended lock, S3 lease (a conditional put, a read and a delete, plus starting and
  stopping the heartbeat thread) against the flock baseline measured in the same run;
- take-over after a SIGKILLed holder: from the kill to the moment another process holds the lock, polling every
  0.1 s, with a ``--lease`` second lease. The floor is the time left on the dead holder's lease at the kill
  (between lease - lease/3 and lease: it renews every lease/3).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from automation.lock import LEASE_ENV, LockBusy, ReleaseLock
from automation.s3_lock import S3Lease
from automation.s3server import start_s3_server, stop_s3_server

HOLD = """
import sys, time
from automation.s3_lock import S3Lease
with S3Lease(sys.argv[1], "mlrelease", "bench", "promote"):
    print("held", flush=True)
    time.sleep(600)
"""


def _median_ms(make, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with make():
            pass
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _takeover(url: str, env: dict[str, str]) -> float:
    child = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    time.sleep(0.5)  # the holder is mid-lease, as a crash would find it
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    while True:
        try:
            with S3Lease(url, "mlrelease", "bench", "rollback") as lease:
                assert lease.took_over is not None
                return time.monotonic() - killed
        except LockBusy:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lock-") as tmp:
        run_dir = Path(tmp) / "run"
        server = start_s3_server(run_dir)
        try:
            os.environ.update(server.env())
            os.environ[LEASE_ENV] = str(args.lease)
            url = server.backend_url()
            s3_ms = _median_ms(lambda: S3Lease(url, "mlrelease", "bench", "promote"), args.runs)
            flock_ms = _median_ms(lambda: ReleaseLock(Path(tmp), "bench", "promote"), args.runs)
            print(f"take + release, median of {args.runs}: s3 lease {s3_ms:.1f} ms, flock {flock_ms:.2f} ms"
                  f" (ratio {s3_ms / flock_ms:.0f})")  # fmt: skip
            takeovers = [_takeover(url, dict(os.environ)) for _ in range(args.takeovers)]
            spread = f"min {min(takeovers):.2f}, max {max(takeovers):.2f}"
            print(f"take-over after SIGKILL, lease {args.lease:.0f} s, median of {args.takeovers}:"
                  f" {statistics.median(takeovers):.2f} s ({spread})")  # fmt: skip
        finally:
            stop_s3_server(run_dir)


if __name__ == "__main__":
    main()
