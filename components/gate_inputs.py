"""What the gate runner is asked to check, and the checks that run before any server starts.

Gates run inside a dynamic provider's ``check``, on every preview and up: a bad input must stop the run
with one line that names the problem and the fix (``GateInputError``), never with a traceback and never
as a failing gate. So everything that can be checked without serving is checked here first: artifact
digests, the held-out file and its digest, the label and feature columns against the model's feature
schema, and the drift windows (files, or the router's inference log). What is read is digested, so the
evidence names exactly which bytes the verdict was computed from, and the cache key is built from them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.spec import SHA256, GatesSpec
from serving.artifacts import SETTINGS_FILE, ArtifactDigestError, ModelDirError, file_sha256, verify_artifact
from serving.v2 import OutputSpec

if TYPE_CHECKING:  # pandas and pyarrow cost seconds to import: loaded where data is read, not by the program
    import pandas as pd

SCHEMA_FILE = "schema.json"
REFERENCE_OFFSET = timedelta(days=7)
# A default window ends at "now" rounded down to this step, so a preview and the up that follows it read
# the same rows (same digest, one cache entry) unless they straddle a step boundary.
WINDOW_ALIGNMENT = timedelta(minutes=5)
# Less free space than this on the inference log's disk: a part file may not fit, so rows are being dropped.
LOG_MIN_FREE_BYTES = 1024 * 1024
_CLASSIFICATION_METRICS = {"roc_auc", "gini", "ks", "log_loss", "brier", "f1"}


class GateInputError(ValueError):
    """Input the gates cannot run on; the message is one line naming the problem and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """One model version to serve: its MLServer model directory and the digest its artifact must have."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    model_dir: Path
    sha256: str = Field(pattern=SHA256)
    output: OutputSpec = OutputSpec()
    source: str | None = Field(default=None, description="the s3:// URL model_dir was fetched from, if any")


class DriftFiles(_Strict):
    """Explicit drift windows: the prior week's input rows and the current window's (parquet or csv)."""

    kind: Literal["files"] = "files"
    reference: Path
    current: Path


class DriftLog(_Strict):
    """Drift windows read from the router's inference log: the last ``window_hours`` before ``end``
    against the same span seven days earlier."""

    kind: Literal["inference_log"] = "inference_log"
    log_dir: Path
    window_hours: float = Field(gt=0, le=168)
    end: datetime | None = Field(default=None, description="window end; default: now, aligned down")


class GateInputs(_Strict):
    """Everything one gate run reads. ``incumbent`` is None on a stack's first release."""

    environment: Literal["staging", "prod"] = "staging"
    candidate: ModelRef
    incumbent: ModelRef | None = None
    holdout: Path
    holdout_sha256: str = Field(pattern=SHA256)
    label: str = Field(default="default", min_length=1)
    schema_path: Path | None = Field(
        default=None, description=f"feature schema; default: {SCHEMA_FILE} in the model dir, else beside holdout"
    )
    drift: Annotated[DriftFiles | DriftLog, Field(discriminator="kind")]
    gates: GatesSpec = GatesSpec()


class _SchemaFeature(BaseModel):
    name: str
    dtype: str = "float64"
    kind: Literal["numeric", "categorical"] = "numeric"


class _SchemaTensor(BaseModel):
    name: str


class FeatureSchema(BaseModel):
    """The part of a ``schema.json`` the gates read: feature order and kinds, the input tensor.

    Which output holds the score is the release's ``mlrelease:model.output``, not the data's: two versions of
    one model may answer in different layouts.
    """

    features: list[_SchemaFeature] = Field(min_length=1)
    input: _SchemaTensor = _SchemaTensor(name="input-0")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical(self) -> set[str]:
        return {f.name for f in self.features if f.kind == "categorical"}


class WindowDigest(_Strict):
    """One drift window as read: where from, its sha256 and its row count."""

    source: str
    sha256: str
    rows: int
    start: datetime | None = None
    end: datetime | None = None


class DataDigests(_Strict):
    """The datasets behind a verdict, by digest."""

    holdout: str
    holdout_sha256: str
    holdout_rows: int
    label: str
    schema_path: str
    schema_sha256: str
    features: list[str]
    drift_kind: Literal["files", "inference_log"]
    drift_reference: WindowDigest
    drift_current: WindowDigest


class ArtifactDigests(_Strict):
    """A served model by digest: the artifact's bytes and the settings MLServer serves them with."""

    name: str
    version: str
    model_dir: str
    sha256: str
    settings_sha256: str
    output: OutputSpec = Field(default=OutputSpec(), description="where its scores are read")


@dataclass(frozen=True)
class PreparedInputs:
    """Checked inputs, loaded once: what the gates compute on and what the evidence records."""

    schema: FeatureSchema
    holdout: pd.DataFrame
    labels: np.ndarray
    drift_reference: pd.DataFrame
    drift_current: pd.DataFrame
    candidate: ArtifactDigests
    incumbent: ArtifactDigests | None
    data: DataDigests


def check_model(role: str, ref: ModelRef) -> ArtifactDigests:
    try:
        verify_artifact(ref.model_dir, ref.sha256)
    except (ArtifactDigestError, ModelDirError) as exc:
        raise GateInputError(f"{role} {ref.name} {ref.version}: {exc}") from None
    return ArtifactDigests(
        name=ref.name,
        version=ref.version,
        model_dir=str(ref.model_dir),
        sha256=ref.sha256,
        settings_sha256=file_sha256(Path(ref.model_dir) / SETTINGS_FILE),
        output=ref.output,
    )


def _schema_path(inputs: GateInputs) -> Path:
    if inputs.schema_path is not None:
        candidates = [inputs.schema_path]
    else:
        candidates = [Path(inputs.candidate.model_dir) / SCHEMA_FILE, Path(inputs.holdout).parent / SCHEMA_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise GateInputError(
        f"no feature schema at {' or '.join(str(p) for p in candidates)}: write a {SCHEMA_FILE} (features"
        " with name and kind, input and output tensor names) into the model directory or beside the held-out set"
    )


def _load_schema(path: Path) -> FeatureSchema:
    try:
        return FeatureSchema.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise GateInputError(f"feature schema {path} is invalid: {first}; it needs a non-empty features list") from None


def _read_table(path: Path, what: str, fix: str) -> pd.DataFrame:
    from serving.tables import TableError, read_table

    if not path.is_file():
        raise GateInputError(f"{what} {path} does not exist: {fix}")
    try:
        return read_table(path)
    except TableError as exc:
        raise GateInputError(f"{what} {exc}: {fix}") from None


def _check_features(frame: pd.DataFrame, schema: FeatureSchema, what: str) -> pd.DataFrame:
    """The schema's feature columns of ``frame``, in schema order, as float64 (all must be numeric)."""
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise GateInputError(
            f"{what} lacks feature column(s) {missing} that the model expects (expected {schema.names},"
            f" found {list(frame.columns)}): regenerate it with the model's feature schema"
        )
    features = frame[schema.names]
    not_numeric = [name for name in schema.names if features[name].dtype.kind not in "biuf"]
    if not_numeric:
        raise GateInputError(
            f"{what} has non-numeric feature column(s) {not_numeric}: the model takes one FP64 tensor;"
            " encode them as numbers as in training"
        )
    return features.astype(np.float64)


def _check_holdout_file(inputs: GateInputs) -> None:
    path = Path(inputs.holdout)
    if not path.is_file():
        raise GateInputError(
            f"held-out set {path} does not exist: restore it or set mlrelease:data.holdout to an existing"
            " parquet or csv"
        )
    actual = file_sha256(path)
    if actual != inputs.holdout_sha256:
        raise GateInputError(
            f"held-out set {path} has sha256 {actual} but {inputs.holdout_sha256} was expected: restore the"
            " recorded file, or record the new digest in mlrelease:data.holdout_sha256"
        )


def _load_holdout(inputs: GateInputs, schema: FeatureSchema) -> tuple[pd.DataFrame, np.ndarray]:
    import pandas as pd

    path = Path(inputs.holdout)
    frame = _read_table(path, "held-out set", "rewrite it as parquet or csv")
    if inputs.label not in frame.columns:
        raise GateInputError(
            f"held-out set {path} has no label column {inputs.label!r} (columns: {list(frame.columns)}):"
            " set mlrelease:data.label to the label's column name"
        )
    if frame.empty:
        raise GateInputError(f"held-out set {path} has no rows: write the held-out rows into it")
    features = _check_features(frame, schema, f"held-out set {path}")
    if features.isna().any().any():
        raise GateInputError(f"held-out set {path} has missing feature values: impute them as at serving time")
    labels = frame[inputs.label].to_numpy()
    if pd.isna(labels).any():
        raise GateInputError(f"held-out set {path} has missing labels in {inputs.label!r}: drop those rows")
    if inputs.gates.evaluation.metric in _CLASSIFICATION_METRICS and not np.isin(labels, (0, 1)).all():
        raise GateInputError(
            f"held-out label {inputs.label!r} in {path} is not 0/1 but {inputs.gates.evaluation.metric}"
            " needs binary labels: encode the positive class as 1"
        )
    return features, labels.astype(np.float64)


def frame_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a frame's column names and values (row order included), for windows that are not files."""
    import pandas as pd

    digest = hashlib.sha256(json.dumps(list(map(str, frame.columns))).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _drift_files(source: DriftFiles, schema: FeatureSchema) -> tuple[pd.DataFrame, pd.DataFrame, list[WindowDigest]]:
    frames, digests = [], []
    for role, path in (("reference", Path(source.reference)), ("current", Path(source.current))):
        fix = f"set mlrelease:data.drift_{role} to an existing parquet or csv of input rows"
        frame = _check_features(_read_table(path, f"drift {role} window", fix), schema, f"drift {role} window {path}")
        if frame.empty:
            raise GateInputError(f"drift {role} window {path} has no rows: {fix}")
        frames.append(frame)
        digests.append(WindowDigest(source=str(path), sha256=file_sha256(path), rows=len(frame)))
    return frames[0], frames[1], digests


def window_bounds(source: DriftLog, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of the current window; the reference window is the same span REFERENCE_OFFSET earlier."""
    if source.end is not None:
        end = source.end if source.end.tzinfo else source.end.replace(tzinfo=UTC)
    else:
        now = now or datetime.now(UTC)
        step = WINDOW_ALIGNMENT.total_seconds()
        end = datetime.fromtimestamp(now.timestamp() // step * step, UTC)
    return end - timedelta(hours=source.window_hours), end


def _log_disk_full(log_dir: Path) -> str | None:
    """Why the log's windows cannot be trusted because its disk is full, or None.

    A router whose log writes fail keeps serving and counts the rows it could not write
    (``mlrelease_log_dropped_rows_total``), so the log has holes while the disk stays full.
    """
    probe = next((p for p in (log_dir, *log_dir.parents) if p.exists()), None)
    if probe is None:
        return None
    free = shutil.disk_usage(probe).free
    if free >= LOG_MIN_FREE_BYTES:
        return None
    return (
        f"the inference log's disk at {log_dir} is full ({free} bytes free): the router drops the rows it cannot"
        " write (mlrelease_log_dropped_rows_total), so its windows are incomplete; free space there and run again"
    )


def _drift_log(source: DriftLog, schema: FeatureSchema) -> tuple[pd.DataFrame, pd.DataFrame, list[WindowDigest]]:
    from serving.inference_log import read_window

    full = _log_disk_full(source.log_dir)
    if full:
        raise GateInputError(full)
    start, end = window_bounds(source)
    frames, digests = [], []
    for role, offset in (("reference", REFERENCE_OFFSET), ("current", timedelta(0))):
        lo, hi = start - offset, end - offset
        frame = read_window(source.log_dir, lo, hi, schema.names)[schema.names]
        if frame.empty:
            raise GateInputError(
                f"no rows in the inference log between {lo.isoformat()} and {hi.isoformat()} ({role} window):"
                f" {source.log_dir}; send traffic through the router first, or set mlrelease:data.drift_reference"
                " and drift_current to parquet or csv windows"
            )
        frame = frame.astype(np.float64)
        frames.append(frame)
        digests.append(
            WindowDigest(source=str(source.log_dir), sha256=frame_sha256(frame), rows=len(frame), start=lo, end=hi)
        )
    return frames[0], frames[1], digests


def prepare(inputs: GateInputs) -> PreparedInputs:
    """Check and load every input; raise GateInputError on the first problem. Starts nothing."""
    candidate = check_model("candidate", inputs.candidate)
    incumbent = check_model("incumbent", inputs.incumbent) if inputs.incumbent is not None else None
    _check_holdout_file(inputs)
    schema_path = _schema_path(inputs)
    schema = _load_schema(schema_path)
    holdout, labels = _load_holdout(inputs, schema)
    if isinstance(inputs.drift, DriftFiles):
        reference, current, (ref_digest, cur_digest) = _drift_files(inputs.drift, schema)
    else:
        reference, current, (ref_digest, cur_digest) = _drift_log(inputs.drift, schema)
    data = DataDigests(
        holdout=str(inputs.holdout),
        holdout_sha256=inputs.holdout_sha256,
        holdout_rows=len(holdout),
        label=inputs.label,
        schema_path=str(schema_path),
        schema_sha256=file_sha256(schema_path),
        features=schema.names,
        drift_kind=inputs.drift.kind,
        drift_reference=ref_digest,
        drift_current=cur_digest,
    )
    return PreparedInputs(
        schema=schema,
        holdout=holdout,
        labels=labels,
        drift_reference=reference,
        drift_current=current,
        candidate=candidate,
        incumbent=incumbent,
        data=data,
    )
