"""``mlrelease init``: a stack for your own model, from an MLServer model directory and a held-out file.

A new user has a model directory and a held-out set; everything else a release needs is derived here and checked
the way the gates will check it, so the first ``promote`` is about the model and not about the setup:

- the model is served once by a real MLServer, as the gates serve it, and a few held-out rows are scored: that
  proves the artifact loads and takes the rows, and shows where its scores are (``mlrelease:model.output``);
- the feature schema (order and kinds) is inferred from the held-out columns; a column whose kind its values
  cannot tell (text, or a few whole numbers) is refused until it is encoded or declared;
- every digest is computed (the artifact's, the held-out file's);
- ``Pulumi.<stack>.yaml`` is generated from the spec's own models (values from its defaults and this module's
  per-environment table, comments from its docstrings and descriptions), validated with ``load_spec`` and, for
  prod, against the policy, so the file cannot drift from what the program accepts;
- the stack is created in the backend with the engine environment every command uses.

Everything is checked before anything is written, and a refusal writes nothing: no schema, no stack file, no stack.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import textwrap
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pandas as pd
import yaml
from pulumi import automation as auto
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from automation.engine import PROJECT_DIR, EngineMissing, engine_env, workspace
from automation.errors import CommandFailed
from components.gate_inputs import SCHEMA_FILE, FeatureSchema
from components.policy import PROD_BOUNDS, violations
from components.spec import NAMESPACE, ReleaseSpec, SpecError, load_spec
from components.stack_config import namespaced
from serving import http, supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError, artifact_digest, file_sha256, read_settings
from serving.client import v2_request
from serving.modelserver import ModelServerError, start_model_server
from serving.tables import TableError, read_table
from serving.v2 import OutputMismatch, OutputSpec, read_scores

Say = Callable[[str], None]
Environment = Literal["staging", "prod"]
LabelKind = Literal["binary", "continuous"]

# An integer-valued column with at most this many distinct values may be a category or a count: refused until
# declared (the drift gate tests a categorical feature per level and a numeric one on deciles).
MAX_LEVELS = 10
SCORED_ROWS = 20
SERVE_TIMEOUT_S = 120.0  # a cold MLServer start on a loaded 2-core machine
INPUT_NAME = "input-0"
PREDICT_PROBA = "predict_proba"
_STACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SKLEARN = "mlserver_sklearn.SKLearnModel"
_SERVER = "init-check"
_WIDTH = 118  # stack file lines, comments included
_COMMENT_COLUMN = 34

# The documented values of each environment where they differ from the spec's defaults (Pulumi.staging.yaml and
# Pulumi.prod.yaml): staging on the local target has no clients, so it replays held-out rows; prod bakes longer,
# on real client traffic only. Every other threshold is the spec's default, which prod policy allows.
ENVIRONMENT_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "staging": {"canary": {"synthetic_rps": 50}},
    "prod": {
        "canary": {"bake_seconds": 60, "min_pairs": 500, "max_bake_seconds": 900, "synthetic_rps": 0},
        "watch": {"missing_seconds": 60},
    },
}

# Comments for keys whose spec description is missing or too terse for a reviewer of the stack file.
COMMENTS = {
    "environment": "staging | prod. Prod thresholds may not be looser than components/policy.py (enforced in the"
    " gates' check and by the CrossGuard pack in policy/).",
    "target": "Where the release runs. local: MLServer processes, the router and Prometheus on this machine.",
    "model": "The model the stack serves. `mlrelease promote` changes path, version and sha256.",
    "model.name": "the model name clients call (lowercase letters, digits, dashes)",
    "model.version": "version label, recorded in stack history and shown by audit",
    "model.sha256": "artifact digest (serving.artifacts.artifact_digest)",
    "model.output": "Where the scores are in the model's V2 answer (chosen by `mlrelease init` from a served answer).",
    "model.output.column": "column of a [rows, k] output (1: P(positive) of predict_proba); unset: one column",
    "data": "Held-out rows (features + label), scored exactly as served, and the drift windows; pinned by digest.",
    "data.drift_reference": "prior week's input rows; unset (with drift_current): the router's inference log",
    "data.drift_current": "current window's input rows; unset (with drift_reference): the router's inference log",
    "gates.evaluation": "Non-inferiority against the incumbent on the same rows, plus a floor.",
    "gates.evaluation.tolerance": "lower bound of (candidate - incumbent) must be >= -tolerance",
    "gates.evaluation.confidence": "of the paired bootstrap interval",
    "gates.evaluation.n_boot": "bootstrap resamples of the held-out rows",
    "gates.latency.p99_ms": "upper confidence bound of p99 must be <= this",
    "gates.latency.p50_ms": "upper confidence bound of p50 must be <= this",
    "gates.latency.rate_rps": "constant request rate of the measurement",
    "gates.latency.requests": ">= 299 for a 95 % bound on p99",
    "gates.latency.warmup_requests": "sent first, not measured",
    "gates.latency.confidence": "of the latency bounds",
    "gates.memory.max_mb": "serving process tree RSS, peak and after warm-up",
    "gates.drift.psi_threshold": "a feature drifts when PSI > threshold and its test is significant",
    "gates.drift.alpha": "after the correction below",
    "gates.drift.correction": "bh (Benjamini-Hochberg) | bonferroni",
    "canary.steps": "traffic percent on the candidate, increasing, ending at 100",
    "canary.bake_seconds": "minimum time per step",
    "canary.min_pairs": "shadow pairs (same input, both versions) a step needs",
    "canary.max_bake_seconds": "too few pairs by then fails the step: missing telemetry is never healthy",
    "canary.lease_seconds": "a step's split reverts to the incumbent unless the step renews it this often",
    "canary.shadow_fraction": "share of requests mirrored to the other version",
    "canary.synthetic_rps": "local target: replay held-out rows through the router (0: real clients only)",
    "canary.max_pairs": "a step decides by this many pairs at the latest",
    "canary.comparison": "Prediction agreement, decided sequentially with equivalence bounds.",
    "canary.comparison.decision_threshold": "score at which the decision flips (disagreement is counted there)",
    "canary.comparison.max_disagreement": "share of pairs with different decisions",
    "canary.comparison.max_abs_diff_p99": "p99 of |candidate - incumbent| score",
    "canary.comparison.max_bias": "mean score shift",
    "canary.comparison.confidence": "of the equivalence bounds",
    "canary.judge": "Candidate vs incumbent error rate and latency.",
    "canary.judge.confidence": "of the judge's Mann-Whitney and two-proportion tests",
    "canary.judge.tolerance": "latency: allowed band +/- tolerance x |Hodges-Lehmann shift estimate|",
    "canary.judge.max_error_rate_increase": "candidate error rate at most this above the incumbent's",
    "rollback.window_seconds": "the previous verified version stays warm (and shadowed) this long",
}


class ServedCheck(BaseModel):
    """What the model answered when served once: its outputs and the score setting chosen from them."""

    implementation: str
    rows_scored: int
    outputs: dict[str, list[int]] = Field(description="V2 output name -> shape, as answered")
    output: OutputSpec = Field(description="the mlrelease:model.output written")
    score_range: tuple[float, float]
    serve_seconds: float = Field(description="start, score and stop")


class SchemaReport(BaseModel):
    """The feature schema the gates will read for this stack."""

    path: Path
    source: Literal["inferred", "model"] = Field(description="inferred from the held-out set, or the model's own")
    written: bool = Field(description="false when an identical file was already there, or it is the model's")
    features: list[str]
    categorical: list[str]


class InitReport(BaseModel):
    """What ``mlrelease init --json`` prints."""

    stack: str
    environment: Environment
    backend: str
    config_path: Path
    model: dict[str, Any] = Field(description="name, version, path, sha256, output as written")
    served: ServedCheck
    feature_schema: SchemaReport
    data: dict[str, Any] = Field(description="holdout, holdout_sha256, rows, label, label_kind, metric, drift")
    notes: list[str]
    next_command: str
    seconds: float


def _refuse(message: str) -> CommandFailed:
    return CommandFailed(" ".join(message.split()), 2)


# -- the held-out set and the schema --------------------------------------------------------------------


def _table(path: Path, option: str) -> pd.DataFrame:
    try:
        frame = read_table(path)
    except TableError as exc:
        raise _refuse(f"{option} {exc}: pass a .parquet or .csv file") from None
    if frame.empty:
        raise _refuse(f"{option} {path} has no rows")
    return frame


def label_kind(frame: pd.DataFrame, label: str, path: Path) -> LabelKind:
    """binary (0/1 labels, both present) or continuous (a regression); anything else is refused."""
    if label not in frame.columns:
        raise _refuse(
            f"held-out set {path} has no label column {label!r} (columns: {list(frame.columns)}): pass --label"
            " with the label's column name"
        )
    values = frame[label]
    if values.isna().any():
        raise _refuse(
            f"held-out label {label!r} in {path} has {int(values.isna().sum())} missing values: drop those rows"
        )
    if values.dtype.kind not in "biuf":
        raise _refuse(
            f"held-out label {label!r} in {path} is not numeric (e.g. {values.iloc[0]!r}): encode the positive"
            " class as 1 and the other as 0"
        )
    distinct = np.unique(values.to_numpy(dtype=np.float64))
    if set(distinct.tolist()) <= {0.0, 1.0}:
        if len(distinct) < 2:
            raise _refuse(f"held-out label {label!r} in {path} has one class only: the held-out set needs both")
        return "binary"
    if len(distinct) <= MAX_LEVELS and np.array_equal(distinct, np.round(distinct)):
        raise _refuse(
            f"held-out label {label!r} in {path} has {len(distinct)} classes {distinct.tolist()}: only binary"
            " classifiers (labels 0/1) and regressions are supported; encode the positive class as 1, the rest 0"
        )
    return "continuous"


def infer_features(
    frame: pd.DataFrame, label: str, categorical: set[str], numeric: set[str], path: Path
) -> list[dict[str, str]]:
    """Feature names in held-out column order with their kinds; refuses what cannot be told or sent as FP64."""
    columns = [str(c) for c in frame.columns if c != label]
    unknown = sorted((categorical | numeric) - set(columns))
    if unknown:
        raise _refuse(
            f"--categorical/--numeric name {unknown}, which are not feature columns of {path} (features: {columns})"
        )
    if both := sorted(categorical & numeric):
        raise _refuse(f"{both} declared both --categorical and --numeric: declare each column once")
    if not columns:
        raise _refuse(f"held-out set {path} has no feature columns besides the label {label!r}")
    text = [c for c in columns if frame[c].dtype.kind not in "biuf"]
    if text:
        example = frame[text[0]].dropna().iloc[0] if frame[text[0]].notna().any() else None
        raise _refuse(
            f"held-out column(s) {text} of {path} are not numeric (e.g. {example!r}): the model takes one FP64"
            " tensor, so write them encoded as numbers, exactly as the model was trained on them"
        )
    missing = [c for c in columns if frame[c].isna().any()]
    if missing:
        raise _refuse(f"held-out column(s) {missing} of {path} have missing values: impute them as at serving time")
    ambiguous = []
    for name in columns:
        distinct = np.unique(frame[name].to_numpy(dtype=np.float64))
        few_whole = len(distinct) <= MAX_LEVELS and np.array_equal(distinct, np.round(distinct))
        if few_whole and name not in categorical | numeric:
            ambiguous.append(f"{name!r} ({len(distinct)} values)")
    if ambiguous:
        raise _refuse(
            f"held-out column(s) {', '.join(ambiguous)} of {path} hold a few whole numbers only: categorical or"
            " numeric? declare them with --categorical COL[,COL] or --numeric COL[,COL] (drift is tested per level"
            " for a categorical feature, on deciles for a numeric one)"
        )
    return [
        {"name": name, "dtype": "float64", "kind": "categorical" if name in categorical else "numeric"}
        for name in columns
    ]


def schema_document(features: list[dict[str, str]], label: str) -> dict[str, Any]:
    """A ``schema.json`` in the layout of the sample models' (``serving.sample_models.feature_schema``)."""
    return {
        "features": features,
        "label": label,
        "input": {"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, len(features)]},
    }


def _schema_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _model_schema(path: Path, frame: pd.DataFrame, declared: bool) -> FeatureSchema:
    """The model directory's own schema.json, which the gates read first; checked against the held-out columns."""
    if declared:
        raise _refuse(
            f"{path} decides the feature kinds (the gates read it first): edit it instead of passing"
            " --categorical/--numeric"
        )
    try:
        schema = FeatureSchema.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise _refuse(f"feature schema {path} is invalid ({type(exc).__name__}): fix it or remove it") from None
    missing = [n for n in schema.names if n not in frame.columns]
    if missing:
        raise _refuse(f"held-out set lacks the feature column(s) {missing} that {path} names")
    return schema


# -- serving the model once -----------------------------------------------------------------------------


def choose_output(outputs: dict[str, list[int]], kind: LabelKind) -> OutputSpec:
    """``predict_proba`` if answered, else the first output; column 1 of two (P(positive)), none of one."""
    tensor = PREDICT_PROBA if PREDICT_PROBA in outputs else next(iter(outputs))
    shape = outputs[tensor]
    if len(shape) not in (1, 2):
        raise _refuse(f"the model's output {tensor!r} has shape {shape}: scores need [rows] or [rows, k]")
    width = shape[1] if len(shape) == 2 else 1
    if width == 1:
        return OutputSpec(tensor=tensor)
    if kind == "continuous":
        raise _refuse(
            f"the model's output {tensor!r} has shape {shape} but the label is continuous: a regression answers one"
            " value per row"
        )
    if width == 2:
        return OutputSpec(tensor=tensor, column=1)
    raise _refuse(
        f"the model's output {tensor!r} has shape {shape}: {width} classes is a multiclass model, and only binary"
        " classifiers (P(positive) in one column, or column 1 of two) and regressions are supported"
    )


def _labels_not_scores(implementation: str) -> str:
    if implementation == _SKLEARN:
        return "release an estimator with predict_proba (e.g. SVC(probability=True), or calibrate it)"
    if implementation.endswith("XGBoostModel"):
        return "save the classifier with XGBClassifier.save_model, or train with objective binary:logistic"
    return "serve the positive-class probability"


def _ask(client: httpx.Client, url: str, rows: pd.DataFrame, kind: LabelKind) -> httpx.Response:
    """The model's answer as a release reads it: a classifier is asked for ``predict_proba`` by name.

    The gates and the router name the configured output in every request, so MLServer's sklearn and XGBoost
    runtimes answer probabilities whatever their default (``predict``, class labels). A runtime that refuses
    that output (a regressor, a booster saved without its classifier wrapper) is asked for its default answer.
    """
    if kind == "binary":
        response = client.post(url, json=v2_request(rows, input_name=INPUT_NAME, output=PREDICT_PROBA))
        if not 400 <= response.status_code < 500:
            return response
    return client.post(url, json=v2_request(rows, input_name=INPUT_NAME))


def serve_once(model_dir: Path, sha256: str, rows: pd.DataFrame, kind: LabelKind, say: Say) -> ServedCheck:
    """Serve ``model_dir`` in MLServer (a throwaway run dir), score ``rows`` over V2, stop it whatever happens."""
    settings = read_settings(model_dir)
    started = time.monotonic()
    say(f"serving {model_dir} once in MLServer ({settings.implementation}) to score {len(rows)} held-out rows")
    with tempfile.TemporaryDirectory(prefix="mlrelease-init-") as run_dir:
        try:
            handle = start_model_server(model_dir, sha256, Path(run_dir), name=_SERVER, timeout=SERVE_TIMEOUT_S)
            with http.client(handle.url, timeout=60.0) as client:
                response = _ask(client, handle.infer_url, rows, kind)
        except (ModelServerError, ModelDirError, ArtifactDigestError, supervisor.ProcessStartError) as exc:
            reason = re.sub(r" \(log: [^)]*\)", "", str(exc))  # the log goes with the run dir
            raise _refuse(f"--model {model_dir} does not serve: {reason}") from None
        except httpx.TransportError as exc:
            raise _refuse(f"--model {model_dir}: MLServer did not answer ({type(exc).__name__}: {exc})") from None
        finally:  # whatever happened, including an interrupt during startup
            if (running := supervisor.running_handle(_SERVER, Path(run_dir))) is not None:
                supervisor.stop(running.state_path)
    if response.status_code >= 400:
        raise _refuse(
            f"--model {model_dir}: MLServer answered HTTP {response.status_code} to {len(rows)} held-out rows"
            f" ({response.text[:300]}): the model must take the {rows.shape[1]} feature columns, in held-out"
            f" order, as one FP64 tensor {INPUT_NAME!r} of shape [rows, {rows.shape[1]}]"
        )
    payload = response.json()
    outputs = {str(o.get("name")): list(o.get("shape") or []) for o in payload.get("outputs") or []}
    if not outputs:
        raise _refuse(f"--model {model_dir}: MLServer's answer has no outputs")
    output = choose_output(outputs, kind)
    try:
        scores = np.asarray(read_scores(payload, output, rows=len(rows)))
    except OutputMismatch as exc:
        raise _refuse(f"--model {model_dir}: {exc}") from None
    if kind == "binary":
        if np.isin(scores, (0.0, 1.0)).all():
            raise _refuse(
                f"--model {model_dir} answers {output.tensor!r} with only 0 and 1 on {len(rows)} held-out rows:"
                f" those are class labels, not scores; {_labels_not_scores(settings.implementation)}"
            )
        if scores.min() < 0 or scores.max() > 1:
            raise _refuse(
                f"--model {model_dir} answers {output.tensor!r} with values in [{scores.min():g}, {scores.max():g}]:"
                " a binary classifier's score must be a probability in [0, 1] (the canary compares decisions at"
                " mlrelease:canary.comparison.decision_threshold)"
            )
    return ServedCheck(
        implementation=settings.implementation,
        rows_scored=len(rows),
        outputs=outputs,
        output=output,
        score_range=(float(scores.min()), float(scores.max())),
        serve_seconds=time.monotonic() - started,
    )


# -- the stack file -------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _scalar(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _policy_note(dotted: str) -> str:
    for bound in PROD_BOUNDS:
        word = "<=" if bound.op == "max" else ">="
        if bound.key == dotted:
            return f"prod policy: {word} {bound.limit:g}"
        if bound.key == f"{dotted}.0":
            return f"prod policy: first step {word} {bound.limit:g}"
    return ""


def _leaf_comment(dotted: str, field: FieldInfo, prod: bool) -> str:
    text = COMMENTS.get(dotted) or field.description or ""
    if not text and typing.get_origin(field.annotation) is Literal:
        text = " | ".join(map(str, typing.get_args(field.annotation)))
    note = _policy_note(dotted) if prod else ""
    return "; ".join(part for part in (text, note) if part)


def _block_comment(text: str, pad: str) -> list[str]:
    text = text.replace("``", "`")  # docstrings are reStructuredText; the stack file is read as plain text
    return [f"{pad}# {line}" for line in textwrap.wrap(text, _WIDTH - 2 - len(pad))] if text else []


def _render(model: BaseModel, lines: list[str], *, indent: int, dotted: str, prod: bool, top: bool) -> None:
    pad = " " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{dotted}.{name}" if dotted else name
        key = f"{NAMESPACE}:{name}" if top else name
        if isinstance(value, BaseModel):
            lines += _block_comment(COMMENTS.get(path) or _first_paragraph(type(value).__doc__), pad)
            lines.append(f"{pad}{key}:")
            _render(value, lines, indent=indent + 2, dotted=path, prod=prod, top=False)
            continue
        comment = _leaf_comment(path, field, prod)
        if value is None:
            if not top:  # an unset optional key, shown so the reader knows it exists
                lines.append(f"{pad}# {key}: (unset) {comment}".rstrip())
            continue
        line = f"{pad}{key}: {_scalar(value)}"
        inline = f"{line.ljust(_COMMENT_COLUMN)}  # {comment}"
        if top or len(inline) > _WIDTH:  # a long comment goes above its key, wrapped
            lines += _block_comment(comment, pad)
            lines.append(line)
        else:
            lines.append(inline if comment else line)


def render_stack_file(spec: ReleaseSpec, stack: str, schema_path: Path) -> str:
    """The commented ``Pulumi.<stack>.yaml`` of ``spec``: every key, in spec order, with what it means."""
    env = spec.environment
    policy = (
        " Prod values are checked against components/policy.py: a looser threshold is refused." if env == "prod" else ""
    )
    header = [
        f"Stack config of stack `{stack}` ({env} environment, {spec.target} target), written by `mlrelease init`.",
        "",
        f"A release changes only `mlrelease:model`: `mlrelease promote --stack {stack} --model DIR` points it at a"
        " new MLServer model directory (version from its model-settings.json, sha256 of its artifact), runs the"
        " gates (preview), then the canary steps (up). Every key is validated: a misspelled or unknown key is an"
        " error. There is no key that disables a gate or skips the canary; only thresholds are tunable. The values"
        f" are the documented defaults of {env}.{policy}",
        "",
        f"The gates read the feature schema {schema_path} (feature order and kinds, inferred from the held-out set).",
    ]
    lines: list[str] = []
    for paragraph in header:
        lines += [f"# {line}" for line in textwrap.wrap(paragraph, _WIDTH - 2)] if paragraph else ["#"]
    lines.append("config:")
    _render(spec, lines, indent=2, dotted="", prod=env == "prod", top=True)
    return "\n".join(lines) + "\n"


def parse_stack_file(text: str) -> dict[str, Any]:
    """The ``mlrelease:*`` config of a stack file's text, keys without the namespace."""
    return namespaced((yaml.safe_load(text) or {}).get("config") or {})


def build_config(
    environment: Environment,
    model: dict[str, Any],
    data: dict[str, Any],
    kind: LabelKind,
    labels: pd.Series,
) -> ReleaseSpec:
    """The release spec init writes: the model and data found, the environment's documented values."""
    config: dict[str, Any] = {"environment": environment, "target": "local", "model": model, "data": data}
    config = _merge(config, ENVIRONMENT_DEFAULTS[environment])
    if kind == "continuous":
        # A regression is judged on RMSE; a model no better than predicting the mean (RMSE = the label's standard
        # deviation) fails the floor.
        floor = float(np.round(labels.to_numpy(dtype=np.float64).std(), 6))
        config = _merge(config, {"gates": {"evaluation": {"metric": "rmse", "floor": floor}}})
    try:
        spec = load_spec(config)
    except SpecError as exc:
        raise _refuse(str(exc)) from None
    if broken := violations(spec):
        raise _refuse(f"the {environment} values break prod policy: {broken[0]}")
    return spec


# -- the command ----------------------------------------------------------------------------------------


def _config_path(path: Path, project_dir: Path) -> str:
    """As written in the stack file: relative to the project when inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(project_dir)) if path.is_relative_to(project_dir) else str(path)


def _split(values: list[str] | None) -> set[str]:
    return {part.strip() for value in values or [] for part in value.split(",") if part.strip()}


def _model_identity(model_dir: Path) -> tuple[str, str, str]:
    try:
        settings = read_settings(model_dir)
        sha256 = artifact_digest(model_dir)
    except (ModelDirError, ArtifactDigestError, OSError) as exc:
        raise _refuse(f"--model {model_dir}: {exc}") from None
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", settings.name):
        raise _refuse(
            f"{model_dir}/model-settings.json names the model {settings.name!r}: clients call it by that name, which"
            " must be lowercase letters, digits and dashes; rename it there"
        )
    version = settings.parameters.version
    if not version or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", version):
        raise _refuse(
            f"{model_dir}/model-settings.json has parameters.version {version!r}: set a version label (letters,"
            " digits, '.', '_', '-'), e.g. \"v1\"; stack history and audit name releases by it"
        )
    return settings.name, version, sha256


def init(
    stack: str,
    model_dir: Path,
    holdout: Path,
    label: str,
    *,
    reference: Path | None = None,
    current: Path | None = None,
    environment: Environment | None = None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    project_dir: Path = PROJECT_DIR,
    env: dict[str, str] | None = None,
    say: Say = lambda _line: None,
) -> InitReport:
    """Check everything, then write schema.json and ``Pulumi.<stack>.yaml`` and create the stack; or refuse."""
    clock = time.monotonic()
    project_dir, model_dir, holdout = Path(project_dir).resolve(), Path(model_dir).resolve(), Path(holdout).resolve()
    environment = environment or ("prod" if stack == "prod" else "staging")
    if not _STACK_NAME.fullmatch(stack):
        raise _refuse(f"--stack {stack!r} is not a stack name: use letters, digits, '.', '_' and '-'")
    config_file = project_dir / f"Pulumi.{stack}.yaml"
    engine = engine_env(env)
    ws = _new_stack_workspace(stack, config_file, project_dir, engine)
    name, version, sha256 = _model_identity(model_dir)
    frame = _table(holdout, "--holdout")
    kind = label_kind(frame, label, holdout)
    schema = _feature_schema(frame, label, holdout, model_dir, _split(categorical), _split(numeric))
    features = schema.report.features
    data: dict[str, Any] = {
        "holdout": _config_path(holdout, project_dir),
        "holdout_sha256": file_sha256(holdout),
        "label": label,
    }
    notes = _drift_windows(reference, current, features, project_dir, data)

    served = serve_once(model_dir, sha256, frame[features].head(SCORED_ROWS), kind, say)
    model = {
        "name": name,
        "version": version,
        "path": _config_path(model_dir, project_dir),
        "sha256": sha256,
        "output": served.output.model_dump(exclude_none=True),
    }
    spec = build_config(environment, model, data, kind, frame[label])
    text = render_stack_file(spec, stack, schema.report.path)
    if load_spec(parse_stack_file(text)) != spec:
        raise CommandFailed(f"internal error: the generated {config_file.name} does not read back as written")

    written = _write_stack(ws, stack, config_file, text, schema.report.path, schema.text, spec)
    say(f"created stack {stack} in {engine['PULUMI_BACKEND_URL']}")
    return InitReport(
        stack=stack,
        environment=environment,
        backend=engine["PULUMI_BACKEND_URL"],
        config_path=config_file,
        model=model,
        served=served,
        feature_schema=schema.report.model_copy(update={"written": written}),
        data={
            **data,
            "rows": len(frame),
            "label_kind": kind,
            "metric": spec.gates.evaluation.metric,
            "drift": "files" if "drift_current" in data else "inference_log",
        },
        notes=notes,
        next_command=f"mlrelease promote --stack {stack} --model {model_dir}",
        seconds=time.monotonic() - clock,
    )


def _new_stack_workspace(
    stack: str, config_file: Path, project_dir: Path, engine: dict[str, str]
) -> auto.LocalWorkspace:
    """The project's workspace, after making sure neither the stack nor its file exists yet."""
    if config_file.exists():
        raise _refuse(
            f"{config_file} already exists: init writes a new stack and never overwrites one; to release into"
            f" {stack} run `mlrelease promote --stack {stack} --model DIR`, or pick another --stack"
        )
    try:
        ws = workspace(work_dir=project_dir, env=engine)
        existing = {s.name.rsplit("/", 1)[-1] for s in ws.list_stacks()}
    except EngineMissing as exc:
        raise _refuse(str(exc)) from None
    if stack in existing:
        raise _refuse(
            f"stack {stack!r} already exists in {engine['PULUMI_BACKEND_URL']} (without a {config_file.name}):"
            f" restore its {config_file.name}, or `pulumi stack rm {stack}` if unused, or pick another --stack"
        )
    return ws


@dataclass(frozen=True)
class _Schema:
    report: SchemaReport
    text: str | None  # what to write; None: the model's own schema, used as it is


def _feature_schema(
    frame: pd.DataFrame, label: str, holdout: Path, model_dir: Path, categorical: set[str], numeric: set[str]
) -> _Schema:
    """The schema the gates will read: the model directory's own if it has one, else inferred beside the holdout."""
    own = model_dir / SCHEMA_FILE
    if own.is_file():
        schema = _model_schema(own, frame, bool(categorical | numeric))
        report = SchemaReport(
            path=own, source="model", written=False, features=schema.names, categorical=sorted(schema.categorical)
        )
        _check_numeric_features(frame, schema.names, f"held-out set {holdout}")
        return _Schema(report=report, text=None)
    features = infer_features(frame, label, categorical, numeric, holdout)
    path, text = holdout.parent / SCHEMA_FILE, _schema_text(schema_document(features, label))
    if path.exists() and path.read_text() != text:
        raise _refuse(
            f"{path} already exists with another schema, and the gates read the one beside the held-out set: put"
            " this held-out file in a directory of its own, or remove the old schema if nothing uses it"
        )
    report = SchemaReport(
        path=path,
        source="inferred",
        written=False,
        features=[f["name"] for f in features],
        categorical=[f["name"] for f in features if f["kind"] == "categorical"],
    )
    return _Schema(report=report, text=text)


def _drift_windows(
    reference: Path | None, current: Path | None, features: list[str], project_dir: Path, data: dict[str, Any]
) -> list[str]:
    """Check the drift window files and add them to ``data``; the notes to show when there are none."""
    if (reference is None) != (current is None):
        raise _refuse("pass both --reference and --current (drift windows), or neither (the router's inference log)")
    if reference is None or current is None:
        return [
            "no --reference/--current: the drift gate reads the router's inference log, which is empty before the"
            " first release; give the first release drift windows (mlrelease:data.drift_reference/drift_current)"
        ]
    for option, path in (("--reference", Path(reference).resolve()), ("--current", Path(current).resolve())):
        window = _table(path, option)
        lacking = [f for f in features if f not in window.columns]
        if lacking:
            raise _refuse(f"{option} {path} lacks the feature column(s) {lacking}: write the model's input rows")
        _check_numeric_features(window, features, f"{option} {path}")
        data[f"drift_{option[2:]}"] = _config_path(path, project_dir)
    return []


def _check_numeric_features(frame: pd.DataFrame, features: list[str], what: str) -> None:
    bad = [f for f in features if frame[f].dtype.kind not in "biuf" or frame[f].isna().any()]
    if bad:
        raise _refuse(
            f"{what} has non-numeric or missing values in {bad}: the model takes one FP64 tensor; encode and impute"
            " them as at serving time"
        )


def _write_stack(
    ws: auto.LocalWorkspace,
    stack: str,
    config_file: Path,
    text: str,
    schema_path: Path,
    schema_text: str | None,
    spec: ReleaseSpec,
) -> bool:
    """Create the stack, then write the files; on any failure undo all three. True if schema.json was written."""
    try:
        auto.Stack.create(stack, ws)
    except auto.StackAlreadyExistsError:
        raise _refuse(f"stack {stack!r} was created meanwhile by someone else: pick another --stack") from None
    # `pulumi stack init` wrote the stack's secrets salt into the file: keep it below the config.
    kept = {k: v for k, v in (yaml.safe_load(config_file.read_text()) or {}).items() if k != "config"}
    write_schema = schema_text is not None and not schema_path.exists()
    try:
        if write_schema:
            _write_atomic(schema_path, schema_text or "")
        salt = f"# Written by `pulumi stack init`: the salt of this stack's secrets.\n{yaml.safe_dump(kept)}"
        _write_atomic(config_file, text + (salt if kept else ""))
        config = namespaced({key: value.value for key, value in ws.get_all_config(stack).items()})
        if load_spec(config) != spec:
            raise CommandFailed(
                f"internal error: the engine reads {config_file.name} differently from how it was written"
            )
    except BaseException:
        with contextlib.suppress(Exception):
            ws.remove_stack(stack)
        config_file.unlink(missing_ok=True)
        if write_schema:
            schema_path.unlink(missing_ok=True)
        raise
    return write_schema


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
