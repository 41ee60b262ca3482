"""V2 payload parsing: the two tensor layouts, refusals with messages, score reading, perturbation."""

from __future__ import annotations

import orjson
import pytest

from serving import v2

FEATURES = ["a", "b", "c"]


def _body(**payload: object) -> bytes:
    return orjson.dumps(payload)


def _tensor(shape: object, data: list, datatype: str = "FP64", name: str = "x") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_one_tensor_rows_become_named_columns() -> None:
    body = _body(
        id="r1", parameters={"entity_key": 42}, inputs=[_tensor([2, 3], [[1, 2, 3], [4, 5, 6]], name="input-0")]
    )
    parsed = v2.parse_request(body, FEATURES)
    assert parsed.rows == 2
    assert parsed.columns == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    assert (parsed.entity_key, parsed.request_id) == ("42", "r1")


def test_one_tensor_per_feature_is_accepted() -> None:
    inputs = [_tensor([2], [i, i + 1], "FP32", name=n) for i, n in enumerate(FEATURES)]
    assert v2.parse_request(_body(inputs=inputs), FEATURES).columns["c"] == [2, 3]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (_body(inputs=[]), "non-empty 'inputs'"),
        (_body(inputs=[_tensor([1, 3], [1, 2])]), "needs 3 values"),
        (_body(inputs=[_tensor([1, 2], [1, 2])]), "expected 3 features"),
        (_body(inputs=[_tensor([1, 3], [1, 2, 3], "FP99")]), "datatype"),
        (_body(inputs=[_tensor([1, 3], [1, "a", 3])]), "non-number"),
        (_body(inputs=[_tensor("1,3", [1, 2, 3])]), "shape"),
        (_body(inputs=[_tensor([2], [1, 2], name="a"), _tensor([3], [1, 2, 3], name="b")]), "rows"),
    ],
)
def test_bad_payloads_are_refused_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(v2.BadRequest, match=message):
        v2.parse_request(body, FEATURES)


def test_scores_read_positive_class_and_perturbation_clips() -> None:
    one_col = _body(outputs=[_tensor([2, 1], [0.2, 0.9])])
    two_col = _body(outputs=[_tensor([2, 2], [[0.8, 0.2], [0.1, 0.9]])])
    assert v2.scores(one_col) == [0.2, 0.9]
    assert v2.scores(two_col) == [0.2, 0.9]
    assert v2.scores(b"oops") is None
    _, shifted = v2.perturb(one_col, 0.4)
    assert shifted == pytest.approx([0.6, 1.0])
