"""The live drift check: the inputs the live version is answering now against the drift gate's reference window.

The drift gate judges a candidate's inputs once, before release. Inputs keep moving after it, and the on-call
engineer wants to see that on the same screen as divergence and latency. The watcher runs this check every
``INTERVAL_S`` on the last ``WINDOW_MINUTES`` of the router's inference log, with the gate's own statistics
and thresholds (``verification.drift.dataset_drift``), and exports it as ``mlrelease_drift_psi{source="live"}``.
It informs; it never fires a rollback (drift is a property of the world, not of the release).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from components.gate_inputs import (
    REFERENCE_OFFSET,
    SCHEMA_FILE,
    DriftLog,
    FeatureSchema,
    GateInputError,
    window_bounds,
)
from components.spec import ReleaseSpec, resolve
from serving.inference_log import read_window
from serving.tables import TableError, read_table
from verification.drift import dataset_drift
from verification.errors import VerificationError

INTERVAL_S = 30.0
WINDOW_MINUTES = 10.0


class LiveDriftUnavailable(Exception):
    """The check cannot run now (no schema, no reference, too few live rows); the message says which."""


def _schema(spec: ReleaseSpec, project_dir: Path) -> FeatureSchema:
    model_dir, holdout = spec.model.model_dir(project_dir), resolve(spec.data.holdout, project_dir)
    for path in (model_dir / SCHEMA_FILE, holdout.parent / SCHEMA_FILE):
        if path.is_file():
            return FeatureSchema.model_validate_json(path.read_bytes())
    raise LiveDriftUnavailable(f"no {SCHEMA_FILE} beside the live model or the held-out set")


def _reference(spec: ReleaseSpec, project_dir: Path, log_dir: Path, names: list[str]) -> Any:
    if spec.data.drift_reference:
        try:
            return read_table(resolve(spec.data.drift_reference, project_dir))[names].astype("float64")
        except (TableError, KeyError, OSError) as exc:
            raise LiveDriftUnavailable(f"the drift reference cannot be read: {exc}") from None
    start, end = window_bounds(DriftLog(log_dir=log_dir, window_hours=spec.data.drift_window_hours))
    return read_window(log_dir, start - REFERENCE_OFFSET, end - REFERENCE_OFFSET, names)[names].astype("float64")


def live_drift(spec: ReleaseSpec, project_dir: Path, log_dir: Path, live: str, now: float) -> dict[str, Any]:
    """The drift report (as JSON) of ``live``'s answered inputs over the last minutes; LiveDriftUnavailable if none."""
    try:
        schema = _schema(spec, project_dir)
    except (GateInputError, ValueError, OSError) as exc:
        raise LiveDriftUnavailable(str(exc)) from None
    names = schema.names
    reference = _reference(spec, project_dir, log_dir, names)
    end = datetime.fromtimestamp(now, UTC)
    current = read_window(log_dir, end - timedelta(minutes=WINDOW_MINUTES), end, names, versions=[live])[names]
    if reference.empty or current.empty:
        raise LiveDriftUnavailable(f"{len(reference)} reference and {len(current)} live rows: nothing to compare yet")
    gate = spec.gates.drift
    try:
        report = dataset_drift(
            reference,
            current.astype("float64"),
            correction=gate.correction,
            alpha=gate.alpha,
            psi_threshold=gate.psi_threshold,
            categorical=schema.categorical,
        )
    except VerificationError as exc:
        raise LiveDriftUnavailable(f"the windows cannot be compared: {exc}") from None
    return report.model_dump(mode="json")
