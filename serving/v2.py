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


def _flatten(data: Any, out: list[Any]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


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
    if datatype not in DATATYPES:
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
    )


def _first_output(payload: Any) -> dict[str, Any] | None:
    if not isinstance(payload, dict):
        return None
    outputs = payload.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    return outputs[0]


def scores(body: bytes) -> list[float] | None:
    """Per-row scores of a V2 response: the first output, last column when it is `[rows, classes]`.

    For `predict_proba`-style outputs the last column is the positive class; a model server that already
    returns the positive-class probability (`[rows]` or `[rows, 1]`) is read as is. None if unreadable.
    """
    try:
        output = _first_output(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None
    if output is None or not isinstance(output.get("data"), list):
        return None
    flat: list[Any] = []
    _flatten(output["data"], flat)
    shape = output.get("shape")
    if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1:
        flat = flat[shape[1] - 1 :: shape[1]]
    try:
        return [float(v) for v in flat]
    except (TypeError, ValueError):
        return None


def perturb(body: bytes, delta: float) -> tuple[bytes, list[float] | None]:
    """Shift every value of the first output by `delta`, clipped to [0, 1] (fault injection for drills)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None
    output = _first_output(payload)
    if output is None or not isinstance(output.get("data"), list):
        return body, scores(body)
    flat: list[Any] = []
    _flatten(output["data"], flat)
    output["data"] = [min(1.0, max(0.0, float(v) + delta)) for v in flat]
    new_body = orjson.dumps(payload)
    return new_body, scores(new_body)


def error_body(message: str) -> bytes:
    """The V2 error shape MLServer also uses: `{"error": "..."}`."""
    return orjson.dumps({"error": message})
