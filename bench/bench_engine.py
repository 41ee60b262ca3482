"""Setup and engine overhead: warm (and optionally cold) setup, no-op `pulumi up`, one-resource `pulumi up`.

Prints one line per measurement: median of N runs, min and max, and the ratio against the no-op up measured
in the same run. Results are recorded in BENCHMARKS.md. Usage:

    .venv/bin/python bench/bench_engine.py [--runs 5] [--cold]

--cold clones the repo into a temp dir and runs setup there with empty Go build and module caches and no pip
cache (a brand-new machine's first `make setup`, minus the Debian packages); it takes several minutes.
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

from automation.engine import PROJECT_DIR, VENV_DIR, select_stack
from serving.artifacts import file_sha256


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
    print(f"{name:<28} median {median:7.2f}s  {spread}{ratio}")
    return median


def cold_setup() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(PROJECT_DIR), str(clone)], check=True)
        env = {
            **os.environ,
            "GOCACHE": f"{tmp}/gocache",
            "GOMODCACHE": f"{tmp}/gomod",
            "PIP_NO_CACHE_DIR": "1",
        }
        return timed(lambda: subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, env=env, check=True), 1)


def engine_stack(tmp: Path) -> auto.Stack:
    work = tmp / "project"
    work.mkdir()
    (work / "__main__.py").write_text((PROJECT_DIR / "__main__.py").read_text())
    (work / "Pulumi.yaml").write_text(
        f"name: mlrelease\nruntime:\n  name: python\n  options:\n    virtualenv: {VENV_DIR}\n"
    )
    model = tmp / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"bench artifact")
    (model / "model-settings.json").write_text(
        json.dumps({"name": "m", "implementation": "x", "parameters": {"uri": "./model.joblib"}})
    )
    (tmp / "state").mkdir()
    env = {**os.environ, "PULUMI_BACKEND_URL": (tmp / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "bench"}
    stack = select_stack("bench", work_dir=work, env=env)
    stack.set_config(
        "mlrelease:model",
        auto.ConfigValue(
            value=json.dumps(
                {
                    "name": "m",
                    "version": "v0",
                    "path": str(model),
                    "sha256": file_sha256(model / "model.joblib"),
                }
            )
        ),
    )
    stack.up()
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time a cold setup in a fresh clone")
    args = parser.parse_args()

    if args.cold:
        report("cold setup (fresh clone)", cold_setup())
    warm = timed(
        lambda: subprocess.run(["bash", "scripts/setup.sh"], cwd=PROJECT_DIR, check=True, capture_output=True),
        args.runs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        stack = engine_stack(Path(tmp))
        noop = report("no-op pulumi up", timed(stack.up, args.runs))
        report("warm setup", warm, noop)
        versions = iter(range(1, args.runs + 1))

        def one_resource_up() -> None:
            config = json.loads(stack.get_config("mlrelease:model").value)
            stack.set_config(
                "mlrelease:model",
                auto.ConfigValue(value=json.dumps({**config, "version": f"v{next(versions)}"})),
            )
            result = stack.up()
            assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes

        report("one-resource pulumi up", timed(one_resource_up, args.runs), noop)


if __name__ == "__main__":
    main()
