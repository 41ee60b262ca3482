"""``mlrelease init`` time, and the time from ``init`` to promoted for a stock model, through the real console script.

A stock scikit-learn pipeline (``Pipeline(StandardScaler, LogisticRegression)`` saved with ``joblib.dump``,
served by MLServer's sklearn runtime) trained on scikit-learn's breast-cancer data, with CSV held-out rows and
drift windows, as in ``tests/stock_models.py``. Each run uses a fresh copy of the program and a fresh
``file://`` backend, then: ``init`` (serve once, infer the schema, digest, write the stack, create it) and
``promote`` (first release: the four gates at preview, then the up). Baseline in the same run: ``mlrelease
version``, the cost of starting the command and the engine alone.

    .venv/bin/python bench/bench_init.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from automation.engine import VENV_DIR  # noqa: E402
from automation.sandbox import copy_program  # noqa: E402
from components.targets.local import LocalTarget  # noqa: E402
from tests import stock_models  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cli = str(VENV_DIR / "bin" / "mlrelease")
    rows: dict[str, list[float]] = {"version (baseline)": [], "init": [], "promote": [], "init to promoted": []}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-init-") as tmp:
            root = Path(tmp)
            project = copy_program(root / "project")
            (root / "state").mkdir()
            env = {**os.environ, "PULUMI_BACKEND_URL": (root / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "bench"}
            data = stock_models.breast_cancer_csv(root / "data")
            model = stock_models.sklearn_pipeline_dir(root / "model")
            common = ["--stack", "staging", "--project-dir", str(project)]
            try:
                rows["version (baseline)"].append(timed([cli, "version"], env))
                init = timed(
                    [cli, "init", *common, "--model", str(model), "--holdout", str(data.holdout),
                     "--label", data.label, "--reference", str(data.reference), "--current", str(data.current)],
                    env,
                )  # fmt: skip
                promote = timed([cli, "promote", *common, "--model", str(model)], env)
            finally:
                LocalTarget.for_stack(project, "staging").destroy()
            rows["init"].append(init)
            rows["promote"].append(promote)
            rows["init to promoted"].append(init + promote)
            print(f"run {run}: init {init:.1f} s, promote {promote:.1f} s", flush=True)
    base = statistics.median(rows["version (baseline)"])
    print(f"{'measurement':<22} {'median':>8} {'min':>7} {'max':>7} {'n':>3} {'x baseline':>10}")
    for name, values in rows.items():
        median = statistics.median(values)
        spread = f"{min(values):>6.2f}s {max(values):>6.2f}s"
        print(f"{name:<22} {median:>7.2f}s {spread} {len(values):>3} {median / base:>10.1f}")


if __name__ == "__main__":
    main()
