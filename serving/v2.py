"""Open Inference Protocol (V2) payloads, read only as far as routing, logging and shadow pairs need.

The router forwards the client's body bytes untouched; this module parses them once (orjson) to validate
the tensors, pull out the entity key and the feature columns for the inference log, and reads the scores
out of the upstream's response. Two request layouts are understood, the two MLServer's codecs produce:
one 2-D tensor `[rows, features]` (NumPy codec; columns named by the router's `feature_names`), or one
1-D (or `[rows, 1]`) tensor per feature (pandas codec; columns named by the inputs).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

NUMERIC_TYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"}
)
DATATYPES = NUMERIC_TYPES | {"BYTES"}


class BadRequest(ValueError):
    """A client payload the router refuses (answered 400 with this message)."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the router needs from a V2 inference request."""

    rows: int
    columns: dict[str, list[Any]]
    entity_key: str | None
    request_id: str | None
    digest: str
    payload: dict[str, Any] | None = None  # the request, when it names no outputs (the router then names them)


def _flatten(data: list[Any], out: list[Any]) -> None:
    """Row-major values of nested lists, without recursion (a client picks the nesting depth)."""
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()


def _tensor(raw: Any, index: int) -> tuple[str, list[int], str, list[Any]]:
    if not isinstance(raw, dict):
        raise BadRequest(f"inputs[{index}] must be an object")
    name, shape, datatype, data = raw.get("name"), raw.get("shape"), raw.get("datatype"), raw.get("data")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}].name must be a non-empty string")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequest(f"input {name!r}: shape must be a non-empty list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != math.prod(shape):
        raise BadRequest(f"input {name!r}: shape {shape} needs {math.prod(shape)} values, got {len(flat)}")
    if datatype in NUMERIC_TYPES:
        for value in flat:
            if not isinstance(value, int | float):
                raise BadRequest(f"input {name!r}: {datatype} data holds a non-number {value!r}")
    return name, shape, datatype, flat


def parse_request(body: bytes, feature_names: list[str] | None) -> ParsedRequest:
    """Validate a V2 inference request and return its rows as feature columns."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    tensors = [_tensor(raw, i) for i, raw in enumerate(inputs)]
    columns: dict[str, list[Any]] = {}
    if len(tensors) == 1 and len(tensors[0][1]) == 2:
        name, (rows, width), _, flat = tensors[0]
        if feature_names is not None and width != len(feature_names):
            raise BadRequest(f"input {name!r}: expected {len(feature_names)} features per row, got {width}")
        names = feature_names or [f"{name}_{i}" for i in range(width)]
        for j, feature in enumerate(names):
            columns[feature] = flat[j::width]
    else:
        rows = tensors[0][1][0]
        for name, shape, _, flat in tensors:
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise BadRequest(f"input {name!r}: with several inputs each must be [rows] or [rows, 1]")
            if shape[0] != rows:
                raise BadRequest(f"input {name!r}: {shape[0]} rows, other inputs have {rows}")
            columns[name] = flat
        if feature_names is not None and set(columns) != set(feature_names):
            missing = sorted(set(feature_names) - set(columns))
            extra = sorted(set(columns) - set(feature_names))
            raise BadRequest(f"inputs do not match the model's features: missing {missing}, unknown {extra}")
    if rows == 0:
        raise BadRequest("request has zero rows")
    for feature in columns:
        if feature.startswith("_"):
            raise BadRequest(f"feature names starting with '_' are reserved: {feature!r}")
    params = payload.get("parameters")
    key = params.get("entity_key") if isinstance(params, dict) else None
    request_id = payload.get("id")
    digest = hashlib.blake2b(orjson.dumps(inputs), digest_size=16).hexdigest()
    return ParsedRequest(
        rows=rows,
        columns=columns,
        entity_key=None if key is None else str(key),
        request_id=request_id if isinstance(request_id, str) and request_id else None,
        digest=digest,
        payload=None if "outputs" in payload else payload,
    )


class OutputSpec(BaseModel):
    """Which output of a V2 response holds the score, and which column of it (``mlrelease:model.output``).

    Stock runtimes answer differently: MLServer's sklearn runtime with ``predict_fn: predict_proba`` gives
    ``predict_proba`` of shape ``[rows, 2]`` (column 1 is P(positive)), XGBoost's gives the same, LightGBM's
    booster gives ``predict`` of shape ``[rows]`` or ``[rows, 1]``, a regression gives ``predict``. The release
    names which it is, so the gates, the canary's pairs and the watcher all read the same number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor: str = Field(default="predict_proba", min_length=1, description="name of the V2 output holding the scores")
    column: int | None = Field(
        default=None,
        ge=0,
        description="column of a [rows, k] output (1: P(positive) of predict_proba); omit if 1-column",
    )


DEFAULT_OUTPUT = OutputSpec()


class OutputMismatch(ValueError):
    """A response that does not hold scores where the output spec says: deterministic, so never retried."""


def read_scores(payload: Any, output: OutputSpec, rows: int | None = None) -> list[float]:
    """One score per row from a parsed V2 response, as ``output`` names them; OutputMismatch says the fix."""
    outputs = payload.get("outputs") if isinstance(payload, dict) else None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise OutputMismatch("the response has no V2 'outputs' list")
    by_name = {o.get("name"): o for o in outputs}
    found = by_name.get(output.tensor)
    if found is None:
        hint = ""
        if "predict" in by_name and output.tensor == "predict_proba":
            hint = (
                " (MLServer's sklearn runtime answers 'predict', class labels, unless model-settings.json sets"
                ' parameters.extra.predict_fn to "predict_proba"; a regression sets output.tensor: predict)'
            )
        raise OutputMismatch(
            f"the model answered outputs {sorted(map(str, by_name))}, not {output.tensor!r}: set"
            f" mlrelease:model.output.tensor to the one holding the scores{hint}"
        )
    data, shape = found.get("data"), found.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list) or not shape:
        raise OutputMismatch(f"output {output.tensor!r} has no data or shape")
    flat: list[Any] = []
    _flatten(data, flat)
    width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else 1
    if len(shape) > 2 or width < 1 or len(flat) != math.prod(shape):
        raise OutputMismatch(f"output {output.tensor!r} has shape {shape}; scores need [rows] or [rows, k]")
    if output.column is None and width > 1:
        raise OutputMismatch(
            f"output {output.tensor!r} has {width} columns per row (shape {shape}): set"
            " mlrelease:model.output.column to the score's column (1 for P(positive) of a binary predict_proba)"
        )
    column = output.column or 0
    if column >= width:
        raise OutputMismatch(
            f"mlrelease:model.output.column = {column}, but output {output.tensor!r} has {width} column(s)"
            f" (shape {shape}): set a column below {width}, or omit it for a one-column output"
        )
    picked = flat[column::width]
    if rows is not None and len(picked) != rows:
        raise OutputMismatch(f"output {output.tensor!r} has {len(picked)} rows for {rows} input rows")
    try:
        return [float(v) for v in picked]
    except (TypeError, ValueError):
        raise OutputMismatch(
            f"output {output.tensor!r} holds non-numeric values ({found.get('datatype')}): scores must be numbers"
        ) from None


def scores(body: bytes, output: OutputSpec) -> list[float] | None:
    """Per-row scores of a raw V2 response body, or None if it holds none where ``output`` says."""
    try:
        return read_scores(orjson.loads(body), output)
    except (orjson.JSONDecodeError, OutputMismatch):
        return None


def perturb(body: bytes, delta: float, output: OutputSpec) -> tuple[bytes, list[float] | None]:
    """Shift every value of the scored output by `delta`, clipped to [0, 1] (fault injection for drills)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None
    outputs = payload.get("outputs") if isinstance(payload, dict) else None
    found = next((o for o in outputs or [] if isinstance(o, dict) and o.get("name") == output.tensor), None)
    if found is None or not isinstance(found.get("data"), list):
        return body, scores(body, output)
    flat: list[Any] = []
    _flatten(found["data"], flat)
    try:
        found["data"] = [min(1.0, max(0.0, float(v) + delta)) for v in flat]
    except (TypeError, ValueError):
        return body, None
    new_body = orjson.dumps(payload)
    return new_body, scores(new_body, output)


def error_body(message: str) -> bytes:
    """The V2 error shape MLServer also uses: `{"error": "..."}`."""
    return orjson.dumps({"error": message})
