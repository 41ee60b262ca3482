"""Deterministic drift windows for the sample models: a stable pair and a clearly shifted current window.

The drift gate compares the current window's inputs with the prior week's. Tests and the demo need both
outcomes without a week of traffic, so three parquet files of feature rows are written beside the
held-out set (``out_dir/data`` of ``build_sample_models``)::

    drift_reference.parquet        the prior week's inputs
    drift_current.parquet          this week's inputs, same population: the gate passes
    drift_current_shifted.parquet  this week's inputs, shifted population: the gate blocks

"Same population" has to mean the model's own population: ``make_classification`` draws its cluster
geometry from the seed and the row count, so a new seed would be a different population, not a new
sample of it. The windows are therefore disjoint random subsets of the sample models' own rows
(``make_credit_data()`` with its defaults), drawn with a fixed seed. The shifted window is a third
disjoint subset with three changes a real population shift makes: one feature's mean moves by one
standard deviation, another's spread grows by half, and the region mix is reversed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from serving.artifacts import file_sha256
from serving.sample_models import FEATURES, NUMERIC_FEATURES, REGION, REGION_SHARES, make_credit_data

WINDOW_ROWS = 5_000
WINDOW_SEED = 20240608
REFERENCE_FILE = "drift_reference.parquet"
CURRENT_FILE = "drift_current.parquet"
SHIFTED_FILE = "drift_current_shifted.parquet"


class SampleWindows(BaseModel):
    """The written windows and their sha256 digests."""

    reference: Path
    reference_sha256: str
    current: Path
    current_sha256: str
    shifted: Path
    shifted_sha256: str


def _shift(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    shifted = frame.copy()
    mean_feature, spread_feature = NUMERIC_FEATURES[0], NUMERIC_FEATURES[1]
    shifted[mean_feature] += shifted[mean_feature].std()
    centre = shifted[spread_feature].mean()
    shifted[spread_feature] = centre + 1.5 * (shifted[spread_feature] - centre)
    reversed_shares = REGION_SHARES[::-1]
    shifted[REGION] = rng.choice(len(reversed_shares), size=len(shifted), p=reversed_shares).astype(np.float64)
    return shifted


def build_sample_windows(data_dir: Path, rows: int = WINDOW_ROWS) -> SampleWindows:
    """Write the three windows (feature columns only, schema order) into ``data_dir``."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    population = make_credit_data()[FEATURES]
    if 3 * rows > len(population):
        raise ValueError(f"rows: at most {len(population) // 3} rows per window fit in the sample population")
    rng = np.random.default_rng(WINDOW_SEED)
    order = rng.permutation(len(population))
    windows = [population.iloc[order[i * rows : (i + 1) * rows]].reset_index(drop=True) for i in range(3)]
    windows[2] = _shift(windows[2], rng)
    paths = [data_dir / name for name in (REFERENCE_FILE, CURRENT_FILE, SHIFTED_FILE)]
    for frame, path in zip(windows, paths, strict=True):
        frame.to_parquet(path, index=False)
    reference, current, shifted = paths
    return SampleWindows(
        reference=reference,
        reference_sha256=file_sha256(reference),
        current=current,
        current_sha256=file_sha256(current),
        shifted=shifted,
        shifted_sha256=file_sha256(shifted),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="directory of the held-out set (OUT_DIR/data)")
    args = parser.parse_args(argv)
    built = build_sample_windows(args.data_dir)
    for role in ("reference", "current", "shifted"):
        print(f"{role:<10} {getattr(built, role)} sha256 {getattr(built, f'{role}_sha256')}")


if __name__ == "__main__":
    main()
