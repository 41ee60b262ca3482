"""Evidently side of the drift benchmark; runs in its own venv (bench/.venv-evidently), not the project's.

Usage: bench/.venv-evidently/bin/python bench/bench_verification_evidently.py DATA.npz REPEATS
Loads the same reference/current arrays the main benchmark generated, runs Evidently's
DataDriftPreset REPEATS times and prints one JSON line with the wall times in seconds.
"""

import json
import sys
import time

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset


def main() -> None:
    path, repeats = sys.argv[1], int(sys.argv[2])
    data = np.load(path, allow_pickle=False)
    frames = {}
    numeric = sorted({k.split(":", 1)[1] for k in data.files if k.startswith("ref:x")})
    categorical = sorted({k.split(":", 1)[1] for k in data.files if k.startswith("ref:c")})
    for side in ("ref", "cur"):
        cols = {name: data[f"{side}:{name}"] for name in numeric}
        cols.update({name: data[f"{side}:{name}"].astype(str) for name in categorical})
        frames[side] = pd.DataFrame(cols)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = Dataset.from_pandas(frames["ref"], data_definition=definition)
    cur = Dataset.from_pandas(frames["cur"], data_definition=definition)
    times = []
    drifted = None
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(cur, ref)
        times.append(time.perf_counter() - start)
        drifted = snapshot.dict()["metrics"][0]["value"]
    print(json.dumps({"times": times, "drifted_summary": drifted}, default=str))


if __name__ == "__main__":
    main()
